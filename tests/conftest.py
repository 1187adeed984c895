"""Shared fixtures: one real local Slurm testbed per test session.

The testbed lives in its own directory with its own ports, so it never collides with a
testbed a developer has running, and it is always stopped: at the end of the session,
on a failing test, on Ctrl-C, and on SIGTERM.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

TESTBED_NODES = 4
TESTBED_GPUS = 2


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: the testbed runs munged, slurmctld and slurmd")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def testbed():
    """A running four-node testbed with two GRES GPUs per node, shared by the session."""
    from pitstop.testbed.cluster import Testbed

    directory = Path(tempfile.mkdtemp(prefix="pitstop-test-", dir="/tmp"))
    bed = Testbed(directory)
    stopped = False

    def stop(*_args):
        nonlocal stopped
        if not stopped:
            stopped = True
            bed.down()

    previous = signal.signal(signal.SIGTERM, lambda *a: (stop(), os._exit(143)))
    atexit.register(stop)
    try:
        bed.up(nodes=TESTBED_NODES, gpus_per_node=TESTBED_GPUS, timeout=60)
        yield bed
    finally:
        stop()
        signal.signal(signal.SIGTERM, previous)
        if not os.environ.get("PITSTOP_KEEP_TESTBED"):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def testbed_ssh(testbed):
    """The session's testbed with its sshd on 127.0.0.1 started."""
    from pitstop.testbed.sshd import start_sshd

    layout = testbed.layout
    start_sshd(layout)
    return testbed


@pytest.fixture
def slurm(testbed):
    """A Slurm client for the session's testbed, with every node idle and no jobs left
    over from an earlier test."""
    client = testbed.slurm()
    for job in client.jobs():
        if not job.finished:
            client.cancel(job.job_id)
    layout = testbed.layout
    for node in layout.node_names:
        if not (layout.run_dir / f"slurmd-{node}.pid").exists():
            testbed.start_slurmd(layout, node)
    client.wait_for(lambda s: not [j for j in s.jobs() if not j.finished], 30, what="jobs to end")
    nodes = client.nodes()
    fenced = [n.name for n in nodes if n.drained or n.down or n.failed]
    if fenced:
        client.resume(fenced)
    testbed.wait_idle(layout, 30)
    return client

