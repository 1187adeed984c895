"""Find the few lines of a block of log text that any pattern could match, at grep's pace.

A busy kernel log is nearly all noise: the agent must pass over it without looking at
each line in Python. Every pattern names literal text its lines hold (`contains`); one
multi-literal search over a whole block finds the lines holding any of them, and only
those lines reach the regular expressions.

The search is Hyperscan's (python-hyperscan, where a wheel exists for the machine:
x86_64) — one pass over the block whatever the number of literals — else one
`bytes.find` pass per literal (about a third of the speed). Both give the same lines;
`engine` says which one runs, for the benchmark and the agent's log.
"""

from __future__ import annotations

from typing import Sequence

try:  # optional: not every architecture has a wheel
    import hyperscan as _hyperscan
except ImportError:  # pragma: no cover - exercised where hyperscan is absent
    _hyperscan = None


def minimal_literals(literals: Sequence[str]) -> list[str]:
    """The literals without those holding another one: a line with "GPU has fallen off
    the bus" also holds "has fallen off the bus", so searching the shorter is enough."""
    unique = sorted({lit for lit in literals if lit}, key=len)
    kept: list[str] = []
    for lit in unique:
        if not any(shorter in lit for shorter in kept):
            kept.append(lit)
    return kept


class LiteralScanner:
    """The spans of the lines of a block that hold any of `literals`."""

    def __init__(self, literals: Sequence[str], engine: str = "auto") -> None:
        self.literals = [lit.encode("utf-8") for lit in minimal_literals(literals)]
        if engine == "auto":
            engine = "hyperscan" if _hyperscan is not None and self.literals else "find"
        if engine == "hyperscan" and _hyperscan is None:
            raise RuntimeError("the hyperscan engine was asked for, and python-hyperscan is not installed")
        if engine not in ("hyperscan", "find"):
            raise ValueError(f"scan engine must be auto, hyperscan or find, not {engine!r}")
        self.engine = engine
        self._db = None
        if engine == "hyperscan":
            self._db = _hyperscan.Database(mode=_hyperscan.HS_MODE_BLOCK)
            self._db.compile(expressions=[_hs_literal(lit) for lit in self.literals],
                             ids=list(range(len(self.literals))), elements=len(self.literals),
                             flags=[0] * len(self.literals))

    def line_spans(self, block: bytes) -> list[tuple[int, int]]:
        """(start, end) of each line holding a literal, in order, `end` at its newline
        (or the block's end); each line once however many literals it holds."""
        if not self.literals or not block:
            return []
        starts: set[int] = set()
        if self._db is not None:
            rfind = block.rfind

            def on_match(_id: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
                starts.add(rfind(b"\n", 0, to) + 1)

            self._db.scan(block, match_event_handler=on_match)
        else:
            for literal in self.literals:
                at = block.find(literal)
                while at >= 0:
                    start = block.rfind(b"\n", 0, at) + 1
                    starts.add(start)
                    end = block.find(b"\n", at)
                    if end < 0:
                        break
                    at = block.find(literal, end)
        spans = []
        for start in sorted(starts):
            end = block.find(b"\n", start)
            spans.append((start, len(block) if end < 0 else end))
        return spans


def _hs_literal(literal: bytes) -> bytes:
    """A literal as a Hyperscan expression: every byte escaped."""
    return b"".join(b"\\x%02x" % byte for byte in literal)
