"""The agent's gate back into service: `pitstop check full --resume`, run as a process.

A node the agent rebooted comes back DOWN (the reboot asks Slurm for nextstate=down),
and only a passing full check returns it: the check is the hooks' own command, so the
agent, an operator at a shell and cloud-init all judge a node by the same code. It runs
as a child process, never an import: it loads every device for minutes, it must not
stall the agent's watch of the kernel log meanwhile, and a check that hangs (a GPU that
wedges under load) is killed at a deadline instead of taking the agent with it.

`ReturnCheck` only starts, polls and kills the process; what its exit means for the
node's health is the agent's decision (`interpret`, pure, below).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pitstop import priority

# `pitstop check full --resume` exit statuses (pitstop/hooks/cli.py).
PASSED, FAILED, REFUSED = 0, 1, 3
TIMED_OUT = -1

# The check runs at this niceness: on a node held out of service nothing competes with it,
# so its figures are the same; where nodes share a host (the testbed) it yields the CPU
# to the training ranks beside it (unniced, a check's matmul burn slowed them 3x, and a
# healthy step passed for a stall).
CHECK_NICENESS = 10


@dataclass(frozen=True)
class CheckResult:
    """How one run of the check ended; `tail` is the end of its stderr, for the reason."""

    returncode: int
    seconds: float
    tail: str

    @property
    def timed_out(self) -> bool:
        return self.returncode == TIMED_OUT


def check_command(node: str, config: str | None, python: str = sys.executable) -> list[str]:
    """The argument list of the check, run by the agent's own interpreter (systemd's
    PATH need not hold `pitstop`)."""
    args = [python, "-m", "pitstop", "check", "full", "--resume", "--node", node]
    if config:
        args += ["--config", config]
    return args


class ReturnCheck:
    """One check process at a time, its output in `log_path` (kept for the operator)."""

    def __init__(self, args: Sequence[str], log_path: Path, timeout_s: float) -> None:
        self.args = list(args)
        self.log_path = Path(log_path)
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._started = 0.0

    @property
    def running(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, now: float | None = None) -> None:
        if self._proc is not None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # Its own session: a kill reaches the check's torch workers too.
            self._proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        # Before it starts its workers (it is still importing): they inherit it.
        priority.lower(self._proc.pid, CHECK_NICENESS)
        self._started = time.monotonic() if now is None else now

    def poll(self, now: float | None = None) -> CheckResult | None:
        """The result once the process ended (or was killed at its deadline), else None."""
        if self._proc is None:
            return None
        clock = time.monotonic() if now is None else now
        code = self._proc.poll()
        if code is None:
            if clock - self._started < self.timeout_s:
                return None
            self.kill()
            return CheckResult(TIMED_OUT, clock - self._started, self._tail())
        self._proc = None
        return CheckResult(code, clock - self._started, self._tail())

    def kill(self) -> None:
        """Stop the check and everything it started; nothing it does afterwards counts."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _tail(self, limit: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def interpret(result: CheckResult, reason_is_pitstops: bool) -> str:
    """What the agent does after a check ended: one of

    - "in-service": it passed and resumed the node;
    - "replace": it failed (and failed the node with `Action:Replace`), or it hung;
    - "operator": it refused because an operator's reason is on the node now;
    - "retry": it refused for a passing cause (a job on the node), or could not run at
      all (a broken install is not the node's fault: never escalate on it).
    """
    if result.timed_out or result.returncode == FAILED:
        return "replace"
    if result.returncode == PASSED:
        return "in-service"
    if result.returncode == REFUSED and not reason_is_pitstops:
        return "operator"
    return "retry"
