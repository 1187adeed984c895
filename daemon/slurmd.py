"""The slurmd source: this node's own slurmd died, seen in seconds rather than minutes.

Slurm learns that a node's slurmd is gone only when it stops answering: after
SlurmdTimeout (300 s by default) the node is marked DOWN and its jobs requeued, and until
then a step on the node cannot be cancelled and `srun` waits for the dead node. The agent
runs beside slurmd and can see within a second or so that the process in slurmd's pid
file is gone; it reports `slurmd_down` once slurmd has been dead for `grace_s`, and the
policy fences the node (class `down`: Slurm then treats it as failed at once).

`SlurmdDetector.observe(reading, now)` is the pure rule, fed what was seen and when;
`read_slurmd(pidfile)` is the thin I/O edge (the pid file and psutil), and `SlurmdWatch`
joins the two for the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from pitstop.model import Finding

SOURCE = "slurmd"
SIGNAL = "slurmd_down"
PROGRAM = "slurmd"


@dataclass(frozen=True)
class SlurmdReading:
    """One look at slurmd: the pid its pid file names, and whether that is slurmd, running."""

    pid: int | None  # the pid in the file; None when there is no file or no number in it
    alive: bool
    detail: str = ""  # why it is not alive ("no pid file", "no process 1234", …)


@dataclass
class SlurmdDetector:
    """slurmd seen alive arms the detector; seen dead for `grace_s` after that, one finding.

    A node that never ran slurmd (or a pid file that never held a live slurmd) never
    reports: only a death that was watched is news. After a report, nothing more until
    slurmd has been seen alive again."""

    node: str
    pidfile: str
    grace_s: float = 3.0
    alive_pid: int | None = None  # the slurmd last seen alive; None: not armed yet
    dead_since: float | None = None  # when the armed detector first saw it dead
    reported: bool = False

    @property
    def armed(self) -> bool:
        return self.alive_pid is not None

    def observe(self, reading: SlurmdReading, now: float) -> list[Finding]:
        if reading.alive:
            self.alive_pid, self.dead_since, self.reported = reading.pid, None, False
            return []
        if not self.armed or self.reported:
            return []
        if self.dead_since is None:
            self.dead_since = now
        dead_for = now - self.dead_since
        if dead_for < self.grace_s:
            return []
        self.reported = True
        return [Finding(node=self.node, signal=SIGNAL, code="", device="",
                        message=f"slurmd (pid {self.alive_pid}, {self.pidfile}) not running "
                                f"for {dead_for:.1f}s: {reading.detail}",
                        evidence=f"pidfile={self.pidfile} last_pid={self.alive_pid} "
                                 f"pid_now={reading.pid} {reading.detail}",
                        time=now, source=SOURCE)]


# ---------------------------------------------------------------------------- live edge

def read_slurmd(pidfile: str) -> SlurmdReading:
    """Whether the pid in `pidfile` is a running slurmd. A pid that was reused by another
    program, or a zombie, is not; a process whose details are hidden from us counts as
    alive (fencing a node on a doubt costs more than noticing late)."""
    try:
        text = Path(pidfile).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return SlurmdReading(None, False, "no pid file")
    except OSError as error:
        return SlurmdReading(None, False, f"pid file unreadable: {error.strerror or error}")
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        pid = 0
    if pid <= 0:
        return SlurmdReading(None, False, "no pid in the pid file")
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return SlurmdReading(pid, False, f"pid {pid} is a zombie")
            name = proc.name()
            argv0 = (proc.cmdline() or [""])[0]
    except psutil.NoSuchProcess:
        return SlurmdReading(pid, False, f"no process {pid}")
    except psutil.AccessDenied:
        return SlurmdReading(pid, True)
    if PROGRAM in name or PROGRAM in Path(argv0).name:
        return SlurmdReading(pid, True)
    return SlurmdReading(pid, False, f"pid {pid} is {name!r}, not slurmd")


class SlurmdWatch:
    """The agent's handle: `poll(now)` reads the pid file and returns what is new."""

    def __init__(self, pidfile: str, grace_s: float = 3.0, *, node: str,
                 read: Callable[[str], SlurmdReading] = read_slurmd) -> None:
        self.pidfile = str(pidfile)
        self.detector = SlurmdDetector(node, self.pidfile, grace_s)
        self._read = read

    def poll(self, now: float) -> list[Finding]:
        return self.detector.observe(self._read(self.pidfile), now)
