"""A node drained during an active segment: Slurm swaps it for the spare in the plan's
reservation, and a requeue (what the agent does after fencing) brings the job back inside
the reservation, on the nodes it now holds; `plans watch` finds nothing lost."""

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
