"""A node whose slurmd dies, end to end: its agent sets it DOWN with pitstop's reason
within seconds, long before Slurm's own SlurmdTimeout would, and Slurm requeues the job
that ran there onto another node. The operator's resume ends the fence."""

from __future__ import annotations

import json
import time

import pytest

from pitstop.waiting import wait_until

pytestmark = pytest.mark.slurm

# The testbed's SlurmdTimeout is 10 s: Slurm alone marks the node NOT_RESPONDING after
# about 12 s and DOWN ("Not responding") after about 28 s. The agent has a 2 s grace.
DOWN_WITHIN_S = 9.0


def _state(layout, node: str) -> dict | None:
    try:
        return json.loads((layout.agent_state_dir(node) / f"{node}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_a_dead_slurmd_sets_its_node_down_at_once_and_slurm_requeues_the_job(testbed, slurm):
    layout = testbed.layout
    jobs = layout.jobs_dir
    script = jobs / "slurmd-down.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    with testbed.agents_running(["--kmsg-poll", "0.05"]) as bed:
        # Not pinned (-w): the requeued job must be free to run on another node.
        job_id = slurm.submit(script, ["-J", "slurmd-down", "-N", "1", "--requeue",
                                       "-o", str(jobs / "slurmd-down-%j.out")], cwd=jobs)
        job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.running and j, 20, interval=0.2,
                             what="the job to run")
        (victim,) = job.nodes
        killed_at = time.monotonic()
        bed.inject(victim, "slurmd-stop")
        try:
            down = slurm.wait_for(lambda s: (n := s.node(victim)) and n.down and n.reason and n,
                                  DOWN_WITHIN_S + 6, interval=0.1, what=f"{victim} DOWN")
            down_s = time.monotonic() - killed_at
            assert down.fenced_by_pitstop and "slurmd" in down.reason, down.reason
            assert down_s < DOWN_WITHIN_S, f"{victim} DOWN only after {down_s:.1f}s"
            again = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.running and j.restart_count >= 1 and j,
                                   30, interval=0.2, what="the job to run again elsewhere")
            again_s = time.monotonic() - killed_at
            assert again.restart_count == 1 and victim not in again.nodes
            print(f"\nslurmd killed on {victim}: DOWN with pitstop's reason after {down_s:.1f}s, "
                  f"job {job_id} running again on {','.join(again.nodes)} after {again_s:.1f}s "
                  f"(reason {down.reason!r})")
            state = _state(layout, victim)
            assert (state["health"], state["fence_class"]) == ("FENCED", "down")
            actions = [a["action"] for a in state["actions"]]
            assert "down" in actions and "requeue" not in actions  # Slurm requeued it, not the agent
        finally:
            bed.inject(victim, "slurmd-start")
        # The operator's resume ends the fence; the agent takes it as theirs.
        slurm.resume(victim)
        wait_until(lambda: _state(layout, victim)["health"] == "OK", 15,
                   what=f"{victim}'s agent to accept the operator's resume")
        slurm.cancel(job_id)
        slurm.wait_for(lambda s: (j := s.job(job_id)) is None or j.finished, 20, what="the job to end")
        testbed.wait_idle(layout, 30)


def test_dry_run_down_plans_only_the_down_and_leaves_the_job_to_slurm(testbed, slurm):
    """Slurm requeues the jobs of a DOWN node itself: the plan holds no requeue of pitstop's."""
    from pitstop.daemon.actions import NodeActions

    jobs = testbed.layout.jobs_dir
    script = jobs / "dry-down.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    job_id = slurm.submit(script, ["-J", "dry-down", "-N", "1", "-w", "node3", "--requeue",
                                   "-o", str(jobs / "dry-down-%j.out")], cwd=jobs)
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="job to run")
    outcomes = NodeActions(slurm, "node3", dry_run=True).fence("down", "pitstop: slurmd_down test")
    assert [(o.action, o.dry_run) for o in outcomes] == [("down", True)]
    assert "DOWN" in outcomes[0].detail
    assert slurm.node("node3").available and slurm.job(job_id).restart_count == 0
    slurm.cancel(job_id)
