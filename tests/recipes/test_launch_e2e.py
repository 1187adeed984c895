"""A recipe launched with `pitstop recipes launch` on the real testbed: it trains on two
nodes (two ranks each, gloo), checkpoints, and — interrupted by a requeue, a killed rank
or a stopped slurmd — resumes from its newest complete checkpoint with the same losses
an uninterrupted run has at the same steps."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pitstop.recipes.warm import training_ranks
from pitstop.rundir import iter_progress, latest_complete_checkpoint, list_checkpoints, read_attempts, read_heartbeat
from pitstop.testbed.config import free_port_block
from pitstop.waiting import wait_until

pytestmark = pytest.mark.slurm

RECIPE = "llama3-tiny-seq256-cpu-pretrain"
# Small enough for a tenth of a second a step on this machine, same code path as the recipe.
TINY = ["cluster.nodes=2", "trainer.max_steps=30", "trainer.checkpoint.interval=10",
        "model.dim=64", "model.n_layers=2", "model.ffn_dim=172", "model.n_heads=4",
        "model.n_kv_heads=2", "data.seq_len=64", "model.max_seq_len=64", "data.micro_batch_size=4",
        "schedule.warmup_steps=5", "cluster.signal_seconds=10", "cluster.time=00:10:00"]


def launch(testbed, *extra: str) -> tuple[str, Path]:
    root = testbed.layout.jobs_dir / "runs"
    args = [sys.executable, "-m", "pitstop", "recipes", "launch", RECIPE, *TINY,
            f"run.root={root}", f"cluster.rdzv_port={free_port_block(1)}", *extra, "--json"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **testbed.layout.env()}, cwd=testbed.layout.jobs_dir)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return result["job_id"], Path(result["run_dir"])


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in iter_progress(run_dir)}


def wait_finished(slurm, job_id: str, timeout: float = 240):
    job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.finished and j, timeout, interval=0.5,
                         what=f"job {job_id} to finish")
    return job


def wait_step(run_dir: Path, step: int, timeout: float = 120) -> None:
    wait_until(lambda: (hb := read_heartbeat(run_dir)) and hb.get("step", 0) >= step, timeout,
               interval=0.2, what=f"the run to reach step {step}")


def assert_same_losses_after_resume(run_dir: Path, baseline: dict[int, float]) -> int:
    records = list(iter_progress(run_dir))
    resumed = [r for r in records if r["attempt"] >= 1]  # a requeue or a restart in the allocation
    assert resumed, "no step was logged after the restart"
    first = resumed[0]["step"]
    checkpoint_steps = [c.step for c in list_checkpoints(run_dir)]
    assert first - 1 in checkpoint_steps or first - 1 <= max(checkpoint_steps)
    for record in resumed:
        expected = baseline[record["step"]]
        assert math.isclose(record["loss"], expected, rel_tol=1e-5), (record["step"], record["loss"], expected)
    assert max(r["step"] for r in records) == 30
    return first


@pytest.fixture(scope="module")
def baseline(testbed):
    slurm = testbed.slurm()
    job_id, run_dir = launch(testbed)
    job = wait_finished(slurm, job_id)
    assert job.state == "COMPLETED", (run_dir / f"slurm-{job_id}.out").read_text()[-3000:]
    return run_dir


def test_trains_on_two_nodes_loss_falls_and_checkpoints_every_ten_steps(baseline):
    by_step = losses(baseline)
    assert sorted(by_step) == list(range(1, 31))
    first, last = sum(by_step[s] for s in range(1, 6)) / 5, sum(by_step[s] for s in range(26, 31)) / 5
    assert last < first * 0.8
    assert [c.step for c in list_checkpoints(baseline) if c.complete] == [10, 20, 30]
    assert latest_complete_checkpoint(baseline).step == 30
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(baseline / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    loss_tag = next(t for t in tags if "loss" in t)
    assert len(events.Scalars(loss_tag)) == 30
    records = list(iter_progress(baseline))
    assert all(r["tokens_per_s"] > 0 for r in records) and records[-1]["restart_count"] == 0


def test_scontrol_requeue_resumes_with_the_same_losses(testbed, slurm, baseline):
    job_id, run_dir = launch(testbed)
    wait_step(run_dir, 13)
    slurm.requeue(job_id)
    job = wait_finished(slurm, job_id)
    assert job.state == "COMPLETED" and job.restart_count == 1
    assert assert_same_losses_after_resume(run_dir, losses(baseline)) > 1


def _forked(servers_log: Path, attempt: int) -> list[str]:
    """The tasks the warm servers forked for `attempt`."""
    return sorted(re.findall(rf"forked pid \d+: pitstop.recipes.train \S+ \(attempt {attempt}, step \d+, task (\d+)\)",
                             servers_log.read_text()))


def test_warm_restarts_give_back_the_fenced_node_and_replace_the_spare_around_running_servers(
        testbed, slurm, baseline):
    """`cluster.warm_start` with a spare. The first attempt's ranks wait for the servers
    the batch script started just before them. A node is fenced the way the agent fences
    (drain, end the training step): the step starts again on the spare, forked by the
    server already there, while the fenced node goes back at once (only its server
    stops) and the job grows onto the free node, a new spare whose server imports once
    the step trains. A second node is fenced: the step starts again on that new spare,
    warm too. Never cold, no server started twice, no requeue; the losses are the
    uninterrupted run's."""
    from pitstop.rundir import WARM_STEP_NAME

    job_id, run_dir = launch(testbed, "cluster.launcher=srun", "cluster.warm_start=true",
                             "cluster.spare_nodes=1", "trainer.step_delay=0.3")
    servers = run_dir / "warm-servers.log"
    fenced: list[str] = []

    def fence(attempt: int) -> None:
        job = slurm.job(job_id)
        victim = next(n for n in read_attempts(run_dir)[-1]["nodes"].split(",") if n != job.batch_host)
        slurm.drain(victim, "pitstop: test fence")
        fenced.append(victim)
        warm = slurm.steps(job_id, only_names=(WARM_STEP_NAME,))
        slurm.kill_steps(job_id, [step for step in slurm.steps(job_id) if step not in warm])
        wait_until(lambda: len(_forked(servers, attempt)) == 4, 120, interval=0.2,
                   what=f"attempt {attempt}'s ranks, forked by the warm servers")

    try:
        wait_step(run_dir, 12)
        assert _forked(servers, 0) == ["0", "1", "2", "3"], servers.read_text()
        fence(1)
        job = slurm.job(job_id)
        assert fenced[0] not in job.nodes and len(job.nodes) == 3, job  # given back, and a new spare
        wait_step(run_dir, 22)
        fence(2)
        job = wait_finished(slurm, job_id)
    finally:
        for node in fenced:
            slurm.resume(node)
    out = (run_dir / f"slurm-{job_id}.out").read_text()
    assert job.state == "COMPLETED" and job.restart_count == 0, out[-3000:]
    starts = [r for r in read_attempts(run_dir) if r["event"] == "start"]
    assert [r["attempt"] for r in starts] == [0, 1, 2]
    assert fenced[0] not in starts[1]["nodes"] and not set(fenced) & set(starts[2]["nodes"].split(","))
    assert f"gave back {fenced[0]} " in out and f"gave back {fenced[1]} " in out and "grew by" in out
    assert "starting the rank cold" not in out
    # Three servers at the start (two nodes and the spare), one on the node the job grew onto.
    assert servers.read_text().count(" ready on ") == 4, servers.read_text()
    first = assert_same_losses_after_resume(run_dir, losses(baseline))
    assert first == 11  # the newest complete checkpoint before the first fence was step 10


def test_a_fenced_node_is_replaced_by_the_spare_and_the_spare_grows_back(testbed, slurm, baseline):
    """A node fenced the way the agent fences (drain, end the training step): the step
    starts again in the allocation on the spare, the fenced node is given back, and the
    batch script's keeper grows the job back onto the free node, so a next fence would
    find a spare too (the warm-start test fences twice). No requeue; the losses are the
    uninterrupted run's."""
    job_id, run_dir = launch(testbed, "cluster.spare_nodes=1", "trainer.step_delay=0.3")
    victim = None
    try:
        wait_step(run_dir, 5)
        job = slurm.wait_for(lambda s: (j := s.job(job_id)) and len(j.nodes) == 3 and j, 60,
                             interval=0.3, what="the job to hold its two nodes and a spare")
        running = next(r for r in reversed(read_attempts(run_dir)) if r["event"] == "start")
        victim = next(n for n in running["nodes"].split(",") if n != job.batch_host)
        slurm.drain(victim, "pitstop: test fence")
        slurm.kill_steps(job_id, list(slurm.steps(job_id)))
        wait_until(lambda: len([r for r in read_attempts(run_dir) if r["event"] == "start"]) == 2,
                   60, interval=0.2, what="the restart in the allocation")
        regrown = slurm.wait_for(lambda s: (j := s.job(job_id)) and len(j.nodes) == 3 and victim not in j.nodes
                                 and j, 60, interval=0.3, what="the job to give back the fenced node and grow a spare")
        job = wait_finished(slurm, job_id)
    finally:
        if victim:
            slurm.resume(victim)
    assert job.state == "COMPLETED" and job.restart_count == 0
    starts = [r for r in read_attempts(run_dir) if r["event"] == "start"]
    assert len(starts) == 2 and victim not in starts[1]["nodes"]
    assert len(set(regrown.nodes) - set(starts[1]["nodes"].split(","))) == 1, regrown  # the new spare
    assert "grew by" in (run_dir / f"slurm-{job_id}.out").read_text()
    assert_same_losses_after_resume(run_dir, losses(baseline))


def test_stopped_slurmd_restarts_the_step_on_a_node_the_job_grows_onto(testbed, slurm, baseline):
    """A node's slurmd dies under a job with no spare, and the node is set DOWN (what the
    agent's slurmd watch does within seconds; Slurm alone takes half a minute): the step
    fails, the batch script finds too few nodes left, grows the job onto a free node and
    starts the step again there. No requeue; the losses carry on."""
    job_id, run_dir = launch(testbed, "trainer.step_delay=0.3", "trainer.checkpoint.interval=5")
    wait_step(run_dir, 6)
    job = slurm.job(job_id)
    victim = [n for n in job.nodes if n != job.batch_host][0]
    testbed.inject(victim, "slurmd-stop")
    slurm.set_down(victim, "pitstop: slurmd_down test")
    try:
        wait_until(lambda: len([r for r in read_attempts(run_dir) if r["event"] == "start"]) == 2, 120,
                   interval=0.5, what="the step to start again off the dead node")
        job = wait_finished(slurm, job_id)
    finally:
        testbed.inject(victim, "slurmd-start")
        slurm.resume(victim)
    assert job.state == "COMPLETED" and job.restart_count == 0
    starts = [r for r in read_attempts(run_dir) if r["event"] == "start"]
    assert victim in starts[0]["nodes"] and victim not in starts[1]["nodes"]
    assert "grew by" in (run_dir / f"slurm-{job_id}.out").read_text()
    assert assert_same_losses_after_resume(run_dir, losses(baseline)) > 1
