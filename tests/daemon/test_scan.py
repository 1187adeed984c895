"""Block scanning: the multi-literal search finds exactly the lines a per-line search
finds, with either engine, and the tailer's runs of lines hold exactly its lines."""

from __future__ import annotations

import random

import pytest

from pitstop.daemon import scan
from pitstop.daemon.patterns import KMSG_PATTERNS, PatternSet
from pitstop.daemon.scan import LiteralScanner, minimal_literals
from pitstop.daemon.tail import LineTailer, TailPosition

ENGINES = ["find"] + (["hyperscan"] if scan._hyperscan is not None else [])


def test_literals_holding_a_shorter_one_are_left_to_it():
    assert minimal_literals(["GPU has fallen off the bus", "has fallen off the bus", "SXid (", "Xid ("]) == \
        ["Xid (", "has fallen off the bus"]


def _corpus(seed: int = 5, lines: int = 4000) -> bytes:
    rng = random.Random(seed)
    patterns = PatternSet.load(KMSG_PATTERNS)
    literals = sorted({lit for p in patterns.patterns for lit in p.contains})
    out = []
    for seq in range(lines):
        roll = rng.random()
        if roll < 0.02:
            body = f"NVRM: pre {rng.choice(literals)} post {rng.choice(literals)}"
        elif roll < 0.03:
            body = "x" * rng.randint(0, 3000)
        else:
            body = f"eth0: link up {rng.randint(0, 10**6)} Xid-free noise NVRM: GPU"
        out.append(f"6,{seq},{seq * 10},-;{body}")
        if rng.random() < 0.01:
            out.append(" SUBSYSTEM=pci")
    return ("\n".join(out) + "\n").encode()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_scanner_finds_the_lines_a_per_line_search_finds(engine):
    patterns = PatternSet.load(KMSG_PATTERNS)
    block = _corpus()
    scanner = LiteralScanner([lit for p in patterns.patterns for lit in p.contains], engine=engine)
    found = [block[s:e].decode() for s, e in scanner.line_spans(block)]
    expected = [line for line in block.decode().splitlines() if patterns.may_match(line)]
    assert found == expected and len(found) > 50
    assert scanner.line_spans(b"") == [] and scanner.line_spans(b"no newline, SXid (") == [(0, 18)]


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="auto, hyperscan or find"):
        LiteralScanner(["x"], engine="grep")


@pytest.mark.parametrize("chunk", [7, 64, 4096])
def test_runs_of_lines_hold_exactly_the_lines_poll_gives(tmp_path, chunk):
    data = _corpus(seed=chunk, lines=800) + b"y" * 5000 + b"\ntail without newline"
    log = tmp_path / "log"
    log.write_bytes(data)
    by_line = LineTailer(log, chunk=chunk, max_line=2048)
    by_run = LineTailer(log, chunk=chunk, max_line=2048)
    lines = by_line.poll()
    runs = by_run.poll_blocks()
    assert all(run.endswith(b"\n") for run in runs)
    cut = [line.decode("utf-8", "replace")[:2048] if len(line) > 2048 else line.decode("utf-8", "replace")
           for run in runs for line in run.split(b"\n")[:-1]]
    assert [c[:2048] for c in cut] == lines
    assert by_run.position == by_line.position == TailPosition(inode=log.stat().st_ino,
                                                                offset=len(data) - len(b"tail without newline"))
    # Only lines longer than a run can hold are cut (and counted) by the tailer; the
    # reader cuts the rest of what it keeps.
    assert 1 <= by_run.stats.truncated_lines <= by_line.stats.truncated_lines
    with open(log, "ab") as fh:
        fh.write(b" and its end\n")
    assert b"".join(by_run.poll_blocks()) == b"tail without newline and its end\n"
