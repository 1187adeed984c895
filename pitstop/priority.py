"""Lowering a process's or a thread's CPU priority, for work that must yield to training.

Background work on a worker (the return check, a spare's warm-server imports) competes
with nothing on a node of its own, so a niceness changes nothing there; where nodes share
a host (the testbed) it lets the training ranks beside it keep the CPU.
"""

from __future__ import annotations

import os


def lower(who: int, niceness: int) -> None:
    """Run `who` (a pid, or on Linux a thread id; 0: the calling thread) at `niceness`,
    or at the caller's own where that is lower already; never raises its priority. A
    target that is gone, or a system that refuses, leaves it as it was."""
    try:
        os.setpriority(os.PRIO_PROCESS, who, max(niceness, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError:
        pass
