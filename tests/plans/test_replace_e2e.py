"""A node drained during an active segment: Slurm swaps it for the spare in the plan's
reservation, and a requeue — by hand, then by the real agent after its own fence — brings
the job back inside the reservation, on the nodes it now holds; `plans watch` finds
nothing lost."""

from __future__ import annotations

import time

import pytest

from pitstop.plans.book import book
from pitstop.plans.store import PlanStore

from .conftest import hold_nodes, wait_running

pytestmark = pytest.mark.slurm


def test_a_drained_node_is_replaced_and_the_requeued_job_stays_in_the_reservation(testbed, slurm, plans_cli):
    now = time.time()
    book(slurm, PlanStore(plans_cli.state_dir), "r", {"segments": [{"start": now, "end": now + 300, "nodes": 2}]})
    job = wait_running(slurm, hold_nodes(slurm, testbed, 2, 4, "--reservation=pitstop-r-s1"))
    bad = job.nodes[0]
    slurm.drain(bad, "pitstop: test fence during a segment")
    try:
        slurm.requeue(job.job_id)
        resv = slurm.wait_for(lambda s: bad not in (r := s.reservation("pitstop-r-s1")).nodes and r, 60,
                              what="Slurm to swap the drained node out of the reservation")
        assert len(resv.nodes) == 2
        again = slurm.wait_for(lambda s: (j := s.job(job.job_id)) and j.running and j.restart_count == 1 and j,
                               60, what="the requeued job to run again")
        assert again.reservation == "pitstop-r-s1" and set(again.nodes) == set(resv.nodes), (again, resv)
        assert "lost" not in plans_cli.run("watch", "--once").stdout
    finally:
        slurm.resume(bad)


def test_the_agents_fence_and_requeue_keep_the_run_inside_its_reservation(testbed, slurm, plans_cli):
    """The same with real agents: an XID on one of the job's nodes, the agent there drains
    it and requeues the job, Slurm swaps in the spare, and the job runs again inside the
    reservation."""
    with testbed.agents_running(["--kmsg-poll", "0.05"]):
        now = time.time()
        book(slurm, PlanStore(plans_cli.state_dir), "ag", {"segments": [{"start": now, "end": now + 300, "nodes": 2}]})
        job = wait_running(slurm, hold_nodes(slurm, testbed, 2, 4, "--reservation=pitstop-ag-s1"))
        bad = job.nodes[0]
        testbed.inject(bad, "xid:95")  # uncontained ECC error: drain
        fenced = slurm.wait_for(lambda s: (n := s.node(bad)) and n.fenced_by_pitstop and n, 20,
                                what=f"the agent on {bad} to fence it")
        assert "xid 95" in fenced.reason
        again = slurm.wait_for(lambda s: (j := s.job(job.job_id)) and j.state == "RUNNING" and j.restart_count == 1
                               and j, 60, what="the agent's requeue to run the job again")
        resv = slurm.reservation("pitstop-ag-s1")
        assert bad not in resv.nodes and len(resv.nodes) == 2
        assert again.reservation == "pitstop-ag-s1" and set(again.nodes) == set(resv.nodes), (again, resv)


def test_watch_notes_a_segment_that_lost_a_node_with_no_spare_to_take(slurm, plans_cli):
    now = time.time()
    book(slurm, PlanStore(plans_cli.state_dir), "all", {"segments": [{"start": now, "end": now + 300, "nodes": 4}]})
    bad = slurm.reservation("pitstop-all-s1").nodes[-1]
    slurm.drain(bad, "pitstop: test fence, no spare left")
    try:
        out = plans_cli.run("watch", "--once").stdout
        assert f"all: pitstop-all-s1 lost 1 node(s): {bad} unusable" in out
        assert plans_cli.run("watch", "--once").stdout == ""  # said once, not every pass
        show = plans_cli.json("show", "all")
        assert show["label"] == "Active (segment 1)" and "lost 1 node" in show["events"][-1]["what"]
    finally:
        slurm.resume(bad)
