"""The testbed's RebootProgram: a node "reboots" the way a real one would.

slurmd runs this when slurmctld asks a node to reboot. It finds which testbed node asked
(the `-N` of the slurmd above it), then, detached so slurmd can answer first: stops that
slurmd, gives the node a new boot id and a fresh kernel log, and starts slurmd with `-b`,
which tells slurmctld the reboot is done. Node names come only from our own slurmd's
command line.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil


def requesting_node(pid: int) -> str | None:
    """The `-N` argument of the nearest slurmd among `pid`'s ancestors."""
    try:
        proc = psutil.Process(pid)
        while proc is not None:
            cmdline = proc.cmdline()
            if cmdline and Path(cmdline[0]).name == "slurmd" and "-N" in cmdline:
                return cmdline[cmdline.index("-N") + 1]
            proc = proc.parent()
    except (psutil.Error, IndexError):
        return None
    return None


def main() -> int:
    directory = Path(sys.argv[1])
    node = sys.argv[2] if len(sys.argv) > 2 else requesting_node(os.getppid())
    if not node:
        print("pitstop testbed reboot: no slurmd -N found above this process", file=sys.stderr)
        return 1
    if len(sys.argv) <= 2:
        # Detach and come back as the worker, so slurmd's reboot RPC returns first.
        if os.fork():
            return 0
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        # A real reboot takes minutes; a couple of seconds keeps the drain visible.
        if not _wait_while_testbed_up(directory, float(os.environ.get("PITSTOP_TESTBED_REBOOT_DELAY", "2"))):
            return 0
    from pitstop.testbed.cluster import Testbed
    Testbed(directory).reboot_node(node)
    return 0


def _wait_while_testbed_up(directory: Path, seconds: float) -> bool:
    """Sleep `seconds`, giving up early (False) once the testbed's slurmctld is gone:
    a testbed taken down mid-reboot leaves no worker asleep behind it."""
    from pitstop.testbed import procs
    from pitstop.testbed.config import Layout
    from pitstop.waiting import wait_until

    layout = Layout.load(directory)
    try:
        wait_until(lambda: layout is None or not procs.alive(layout.ctld_pid, "slurmctld"), seconds,
                   what="the testbed to go down", interval=0.2)
    except TimeoutError:
        return True
    return False


if __name__ == "__main__":
    sys.exit(main())
