"""Fixtures for the plan tests on the session's testbed: the `pitstop plans` CLI with its
own state directory, jobs that hold nodes, and a finalizer that leaves no reservation
behind (the four nodes are shared by the whole test session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pitstop.slurm import SlurmError


class PlansCli:
    def __init__(self, testbed, state_dir: Path):
        self.testbed = testbed
        self.state_dir = state_dir
        self.env = {**os.environ, **testbed.layout.env(), "PITSTOP_STATE_DIR": str(state_dir)}

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "pitstop", "plans", *args], capture_output=True,
                              text=True, timeout=120, env=self.env, cwd=self.testbed.layout.jobs_dir)
        if ok:
            assert proc.returncode == 0, f"plans {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *args: str):
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def no_reservations_left(slurm):
    """The testbed's Slurm client; afterwards every job is cancelled and every
    reservation deleted, whatever the test did."""
    yield slurm
    for job in slurm.jobs():
        if not job.finished:
            try:
                slurm.cancel(job.job_id)
            except SlurmError:
                pass
    slurm.wait_for(lambda s: not [j for j in s.jobs() if j.running], 30, what="jobs to end")
    for resv in slurm.reservations():
        slurm.delete_reservation(resv.name)


@pytest.fixture
def plans_cli(testbed, tmp_path, no_reservations_left) -> PlansCli:
    return PlansCli(testbed, tmp_path / "state")


def hold_nodes(slurm, testbed, nodes: int, minutes: int, *extra: str) -> str:
    """A job that holds `nodes` whole nodes with a time limit of `minutes`; its id once it runs
    (or at once, with `wait=False` semantics left to the caller through `extra`)."""
    script = testbed.layout.jobs_dir / "hold.sh"
    script.write_text("#!/bin/bash\nsleep 3600\n")
    script.chmod(0o755)
    return slurm.submit(script, args=[f"--nodes={nodes}", "--exclusive", f"--time={minutes}",
                                      f"--output={testbed.layout.jobs_dir}/hold-%j.out", *extra],
                        cwd=testbed.layout.jobs_dir)


def wait_running(slurm, job_id: str, timeout: float = 30):
    return slurm.wait_for(lambda s: (j := s.job(job_id)) and j.running and j, timeout,
                          what=f"job {job_id} to run")
