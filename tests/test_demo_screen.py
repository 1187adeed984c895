"""`pitstop demo` on a terminal (tmux): the story plays in the TUI, driven as a person
drives it — the fenced node and its reason in the Nodes view, the finding, the fence and
the requeue in the Events view, the run resumed in the Jobs view — and the summary is
printed when the TUI closes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pitstop.waiting import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent / "tui"))
from tui_terminal import PITSTOP, Terminal  # noqa: E402  (the tests' tmux driver)

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

SMALL = ["model.dim=64", "model.n_layers=2", "model.ffn_dim=172", "model.n_heads=4",
         "model.n_kv_heads=2", "data.micro_batch_size=4", "trainer.step_delay=0.3"]


def screen_line(terminal: Terminal, pattern: str, timeout: float, what: str) -> re.Match:
    """The first line on screen that matches `pattern`, waited for."""
    def found():
        return next((m for line in terminal.screen().splitlines() if (m := re.search(pattern, line))), None)
    try:
        return wait_until(found, timeout, what=what)
    except TimeoutError:
        raise AssertionError(f"{what} never showed; the screen was:\n{terminal.screen()}") from None


def test_the_demo_on_a_terminal_shows_the_fence_and_the_resume_in_the_tui(tmp_path):
    directory = Path(tempfile.mkdtemp(prefix="pitstop-demo-tui-", dir="/tmp"))
    env = {"HOME": str(tmp_path), "TERM": "xterm-256color", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PITSTOP_TESTBED_REBOOT_DELAY": "1"}
    command = [PITSTOP, "demo", "--dir", str(directory), "--steps", "20", "--fault-after", "12"]
    for override in SMALL:
        command += ["--override", override]
    terminal = Terminal(f"pitstop-demo-tui-{os.getpid()}")
    exit_file = tmp_path / "demo-exit"
    try:
        terminal.start(env, *command, exit_file=exit_file)
        terminal.tmux("set-option", "-t", "tui", "remain-on-exit", "on")  # keep what it prints at the end
        terminal.wait_for("Nodes [4]", 120)

        # The Nodes view: the node the agent fenced, with pitstop's reason.
        fenced = screen_line(terminal, r"(node\d)\s.*drain.*pitstop: xid 79 gpu1", 240, "the fenced node")
        node = fenced.group(1)

        # The Events view: that node's finding, its fence and the job's restart (its step
        # on the node ended: the batch script starts it again on the spare).
        terminal.keys(":", "events", "Enter")
        terminal.wait_for("Events [")
        screen_line(terminal, rf"{node}\s+finding\s.*xid 79", 30, "the finding")
        screen_line(terminal, rf"{node}\s+action\s+(drain|reboot)\b", 30, "the fence")
        screen_line(terminal, rf"{node}\s+action\s+end_step\s+\d+ ok", 30, "the restart")

        # The Jobs view: the run going on after one restart, past the step it was at.
        terminal.keys(":", "jobs", "Enter")
        terminal.wait_for("Jobs [")
        # (A restart in the allocation is quick: the run may show step 11 first, resumed
        # from its checkpoint at 10; it goes on past 12, where the fault came. A warm
        # restart trains the last steps in seconds: by now the run may have completed.)
        resumed = screen_line(terminal, r"(RUNNING|COMPLETED)\s.*?\s(1[3-9]|20)/20\s.*\s1\s+step \d+",
                              240, "the job running again after one restart, past the step it was at")
        assert int(resumed.group(2)) > 12

        terminal.wait_for("demo done: 1/1 faults detected, 1 restart(s)", 240)
        terminal.keys("q")
        ended = terminal.ended(exit_file)
        printed = terminal.screen()
        assert "ETTR" in printed and "faults detected       1" in printed and "Traceback" not in printed
        assert ended == "0/", f"the demo ended with status/signal {ended}; the screen was:\n{printed}"
        report = json.loads((directory / "demo-summary.json").read_text())
        assert report["summary"]["fenced_nodes"] == [node] and report["summary"]["healthy_fenced"] == []
    finally:
        terminal.kill()
        # The demo tears its testbed down itself; when the test failed first, this does.
        subprocess.run([PITSTOP, "testbed", "down", "--dir", str(directory)], capture_output=True, timeout=120)
