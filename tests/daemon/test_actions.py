"""The agent's actions against the real testbed: fences, requeues, resumes, the breaker."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pitstop.daemon.actions import NodeActions, breaker_view
from pitstop.model import Node

pytestmark = pytest.mark.slurm


def _job(slurm, testbed, *args: str, name: str = "victim") -> str:
    script = Path(testbed.layout.jobs_dir) / f"{name}.sh"
    script.write_text("#!/bin/bash\nsrun sleep 300\n")
    return slurm.submit(script, ["-J", name, "-o", str(testbed.layout.jobs_dir / "%x-%j.out"), *args],
                        cwd=testbed.layout.jobs_dir)


def test_drain_fence_requeues_the_job_elsewhere(slurm, testbed):
    job_id = _job(slurm, testbed, "-N1", "-w", "node2", "--requeue")
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="job to run")
    outcomes = NodeActions(slurm, "node2", settle_s=0.2).fence("drain", "pitstop: xid 48 gpu0 DBE")
    assert [o.action for o in outcomes] == ["drain", "requeue"] and all(o.ok for o in outcomes)
    node = slurm.node("node2")
    assert node.drained and node.reason == "pitstop: xid 48 gpu0 DBE"
    # -w node2 pins the job to node2, so it waits for it; what matters is that it was requeued.
    job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.restart_count == 1 and j, 20,
                         what="job to be requeued")
    assert job.restart_count == 1


def test_a_job_that_restarts_in_its_allocation_loses_only_its_step_on_the_fenced_node(slurm, testbed):
    """No requeue: the step on the fenced node is killed (its batch script would start it
    again elsewhere in the allocation); the job and its step on the other node go on."""
    script = Path(testbed.layout.jobs_dir) / "inplace.sh"
    script.write_text("#!/bin/bash\nsrun -N1 -n1 -w node2 sleep 300 &\nsrun -N1 -n1 -w node3 sleep 300 &\n"
                      "wait\nsleep 300\n")
    job_id = slurm.submit(script, ["-J", "inplace", "-N2", "-w", "node2,node3", "--no-kill", "--requeue",
                                   "-o", str(testbed.layout.jobs_dir / "%x-%j.out")], cwd=testbed.layout.jobs_dir)
    try:
        slurm.wait_for(lambda s: len(s.steps(job_id)) == 2, 20, what="both steps to run")
        actions = NodeActions(slurm, "node2", settle_s=0.2, restarts_in_allocation=lambda job: job.job_id == job_id)
        outcomes = actions.fence("drain", "pitstop: xid 48 gpu0 DBE")
        assert [o.action for o in outcomes] == ["drain", "end_step"] and all(o.ok for o in outcomes)
        assert "ended step" in outcomes[1].detail
        left = slurm.wait_for(lambda s: len(steps := s.steps(job_id)) == 1 and steps, 20,
                              what="the step on node2 to end")
        assert list(left.values()) == [["node3"]]
        job = slurm.job(job_id)
        assert job.running and job.restart_count == 0
    finally:
        slurm.cancel(job_id)
        slurm.resume("node2")


def test_the_reboot_hold_keeps_every_job_off_the_node_until_released(slurm, testbed):
    """Whatever Slurm does with the node's state at its registrations after a reboot, a job
    cannot start on it while the maintenance reservation holds it."""
    actions = NodeActions(slurm, "node4", settle_s=0.2)
    hold = actions.hold_for_reboot("pitstop: xid 79 gpu1")
    try:
        assert hold.ok, hold.detail
        reservation = slurm.reservation(actions.hold_name)
        assert reservation.nodes == ["node4"] and {"MAINT", "IGNORE_JOBS"} <= set(reservation.flags)
        assert not actions.hold_name.startswith("pitstop-")  # the plans' prefix: theirs alone
        assert actions.hold_for_reboot("again").ok  # holding twice is holding
        job_id = _job(slurm, testbed, "-N1", "-w", "node4", name="held")
        # The scheduler has looked at it and refused it the node (not merely not yet run).
        slurm.wait_for(lambda s: s.job(job_id).reason.startswith("ReqNodeNotAvail"), 10,
                       what="the scheduler to hold the job off the reserved node")
        assert slurm.job(job_id).state == "PENDING"
        released = actions.release_hold()
        assert released is not None and released.ok and slurm.reservation(actions.hold_name) is None
        slurm.wait_for(lambda s: s.job(job_id).running, 20, what="the job to start once released")
        assert actions.release_hold() is None  # nothing left to release
        slurm.cancel(job_id)
    finally:
        if slurm.reservation(actions.hold_name) is not None:
            slurm.delete_reservation(actions.hold_name)


def test_each_outcome_of_a_fence_is_reported_as_it_comes(slurm):
    """The drain is on record before the breaker's settle (and a reboot's wait for the
    node to empty), not only once the whole fence returns: the demo and the TUI's events
    view show the fence when it happens."""
    seen: list[str] = []
    actions = NodeActions(slurm, "node4", settle_s=0.2, sleep=lambda s: seen.append("settle"))
    outcomes = actions.fence("drain", "pitstop: test report", on_outcome=lambda o: seen.append(o.action))
    assert seen[:2] == ["drain", "settle"]
    assert [o.action for o in outcomes] == [a for a in seen if a != "settle"]
    assert actions.resume_if_ours().ok
    slurm.wait_for(lambda s: s.node("node4").available, 10, what="node4 resumed")


def test_no_requeue_job_is_left_running(slurm, testbed):
    job_id = _job(slurm, testbed, "-N1", "-w", "node3", "--no-requeue", name="norequeue")
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="job to run")
    outcomes = NodeActions(slurm, "node3", settle_s=0.2).fence("drain", "pitstop: test")
    assert [o.action for o in outcomes] == ["drain"]
    assert slurm.job(job_id).running and slurm.job(job_id).restart_count == 0


def test_operator_drain_is_never_touched(slurm):
    slurm.drain("node1", "operator: replacing a fan")
    actions = NodeActions(slurm, "node1", settle_s=0.2)
    (outcome,) = actions.fence("reboot", "pitstop: xid 79 gpu0 fallen off the bus")
    assert not outcome.ok and "operator" in outcome.detail
    assert actions.resume_if_ours().ok is False
    node = slurm.node("node1")
    assert node.drained and node.reason == "operator: replacing a fan"


def test_resume_only_pitstop_reasons(slurm):
    actions = NodeActions(slurm, "node4", settle_s=0.2)
    actions.fence("drain", "pitstop: test resume")
    assert actions.resume_if_ours().ok
    assert slurm.wait_for(lambda s: s.node("node4").available, 10, what="node4 resumed")
    assert actions.resume_if_ours() is None


def test_dry_run_decides_and_touches_nothing(slurm, testbed):
    job_id = _job(slurm, testbed, "-N1", "-w", "node1", "--requeue", name="dry")
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="job to run")
    outcomes = NodeActions(slurm, "node1", dry_run=True).fence("reboot", "pitstop: dry")
    assert [o.action for o in outcomes] == ["drain", "requeue", "reboot"]
    assert all(o.dry_run for o in outcomes)
    assert slurm.node("node1").available and slurm.job(job_id).restart_count == 0


def test_breaker_keeps_the_share_when_every_agent_fences_at_once(slurm):
    results: dict[str, list] = {}

    def agent(node: str) -> None:
        results[node] = NodeActions(slurm, node, max_fenced_share=0.5, settle_s=1.5).fence(
            "drain", f"pitstop: xid 79 gpu0 on {node}")

    threads = [threading.Thread(target=agent, args=(f"node{i}",)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    fenced = [n.name for n in slurm.nodes() if n.drained]
    assert len(fenced) == 2
    tripped = [node for node, outs in results.items() if any(o.action == "breaker" for o in outs)]
    assert sorted(tripped + fenced) == ["node1", "node2", "node3", "node4"]
    assert all("blast-radius breaker open" in next(o.detail for o in results[n] if o.action == "breaker")
               for n in tripped)


def test_breaker_view_counts_only_recent_pitstop_fences():
    now = 10_000.0
    nodes = [Node("a", "IDLE", ["DRAIN"], reason="pitstop: x", reason_time=now - 10),
             Node("b", "IDLE", ["DRAIN"], reason="operator: y", reason_time=now - 5),
             Node("c", "IDLE", ["DRAIN"], reason="pitstop: old", reason_time=now - 7200),
             Node("d", "IDLE", [], reason=""), Node("e", "DOWN", [], reason="pitstop: z", reason_time=now - 20)]
    view = breaker_view(nodes, 0.5, 3600, now)
    assert view.fenced == ["e", "a"] and view.allowed == 2 and not view.open
