"""The Slurm behaviour training plans rely on, shown on the testbed (Slurm 22.05) rather
than taken from the documentation. Each test's reservations are a few minutes long at
most and are deleted afterwards (the `no_reservations_left` fixture)."""

from __future__ import annotations

import time

import pytest

from pitstop.plans.calendar import JOB_END_SLACK
from pitstop.slurm import SlurmError
from pitstop.slurm.parse import format_time, parse_time

from .conftest import hold_nodes, wait_running

pytestmark = pytest.mark.slurm


def _nodes_of(slurm, name):
    return slurm.reservation(name).nodes


def test_a_node_count_reservation_swaps_a_drained_node_for_a_spare_and_a_node_list_does_not(
        slurm, no_reservations_left):
    slurm.create_reservation("by-count", start="now", duration="5", node_count=2, flags=["REPLACE_DOWN"])
    counted = _nodes_of(slurm, "by-count")
    others = [n.name for n in slurm.nodes() if n.name not in counted]
    listed, spare = others[0], others[1]
    slurm.create_reservation("by-list", start="now", duration="5", nodes=listed)
    slurm.drain([counted[0], listed], "pitstop: test of reservation replacement")
    try:
        replaced = slurm.wait_for(lambda s: counted[0] not in (n := _nodes_of(s, "by-count")) and n, 30,
                                  what="the drained node to be replaced in by-count")
        assert replaced == sorted([counted[1], spare])
        assert _nodes_of(slurm, "by-list") == [listed]
        assert "SPEC_NODES" in slurm.reservation("by-list").flags
    finally:
        slurm.resume([counted[0], listed])


def test_maint_does_not_stop_the_swap_on_this_slurm(slurm, no_reservations_left):
    """The issue expected MAINT to stop REPLACE_DOWN; Slurm 22.05 swaps anyway. pitstop
    books without MAINT regardless (MAINT also marks the time as maintenance in accounting)."""
    slurm.create_reservation("maint", start="now", duration="5", node_count=2, flags=["MAINT", "REPLACE_DOWN"])
    first = _nodes_of(slurm, "maint")
    slurm.drain(first[0], "pitstop: test of reservation replacement")
    try:
        slurm.wait_for(lambda s: first[0] not in _nodes_of(s, "maint"), 30, what="the swap under MAINT")
        assert len(_nodes_of(slurm, "maint")) == 2
    finally:
        slurm.resume(first[0])


def test_busy_nodes_refuse_a_reservation_until_the_second_after_the_job_ends(
        testbed, slurm, no_reservations_left):
    job = wait_running(slurm, hold_nodes(slurm, testbed, nodes=2, minutes=5))
    end = job.start_time + 300
    for name, kwargs in [("now-count", {"start": "now", "node_count": 3}),
                         ("now-list", {"start": "now", "nodes": job.nodes[0]}),
                         ("at-end", {"start": format_time(end), "node_count": 3})]:
        with pytest.raises(SlurmError, match="Requested nodes are busy"):
            slurm.create_reservation(name, duration="1", **kwargs)
    slurm.create_reservation("after-end", start=format_time(end + JOB_END_SLACK), duration="1", node_count=3)
    assert slurm.reservation("after-end").node_count == 3


def test_an_overlapping_node_count_reservation_is_silently_capped(slurm, no_reservations_left):
    start = format_time(time.time() + 600)
    slurm.create_reservation("first", start=start, duration="2", node_count=3)
    slurm.create_reservation("second", start=start, duration="2", node_count=3)
    assert slurm.reservation("second").node_count == 1  # asked for 3, no error


def test_times_are_kept_to_the_second_but_durations_round_up_to_minutes(slurm, no_reservations_left):
    start = int(time.time()) + 600 + 17
    slurm.create_reservation("seconds", start=format_time(start), end=format_time(start + 208), node_count=1)
    resv = slurm.reservation("seconds")
    assert (resv.start_time, resv.end_time) == (start, start + 208)
    # Read back in the controller's time zone, the same text we sent.
    assert parse_time(format_time(start)) == start
    slurm.create_reservation("minutes", start=format_time(start + 3600), duration="00:01:30", node_count=1)
    resv = slurm.reservation("minutes")
    assert resv.end_time - resv.start_time == 120


def test_at_the_reservations_end_its_running_job_times_out_and_its_pending_job_is_held(
        testbed, slurm, no_reservations_left):
    # Start and end keep their seconds (a fact below): a reservation of 15 s is enough.
    slurm.create_reservation("short", start="now", end=format_time(time.time() + 15), node_count=2)
    resv = slurm.reservation("short")
    running = hold_nodes(slurm, testbed, 1, 10, "--reservation=short")
    wait_running(slurm, running)
    pending = hold_nodes(slurm, testbed, 2, 10, "--reservation=short")
    slurm.wait_for(lambda s: (j := s.job(pending)) and j.pending, 10, what="the second job to wait")

    with pytest.raises(SlurmError, match="in use"):
        slurm.delete_reservation("short")

    ended = slurm.wait_for(lambda s: (j := s.job(running)) and j.finished and j, 120,
                           what="the reservation's job to end")
    assert ended.state == "TIMEOUT"
    # slurmctld looks at time limits every 30 s and then waits KillWait (5 s here): the
    # job ends within about half a minute of the reservation, long before its own limit.
    assert resv.end_time - 1 <= ended.end_time <= resv.end_time + 45 < ended.start_time + 600
    slurm.wait_for(lambda s: (j := s.job(pending)) and j.state == "RESV_DEL_HOLD" and j, 30,
                          what="the pending job to be held")
    assert slurm.job_details(pending)["Priority"] == "0"


def test_test_only_is_no_dry_run_when_a_job_is_pending_ahead(testbed, slurm, no_reservations_left):
    """`sbatch --test-only` answers from running jobs and reservations: with nothing
    pending, "now"; with a whole-cluster job pending ahead, an answer that is not where
    the scheduler then really puts the same job."""
    shape = ["--nodes=2", "--exclusive", "--time=20"]
    wait_running(slurm, hold_nodes(slurm, testbed, 2, 5))
    assert slurm.test_only_start(shape) <= time.time() + 5
    ahead = hold_nodes(slurm, testbed, 4, 10)
    slurm.wait_for(lambda s: (j := s.job(ahead)) and j.pending and j.start_time and j, 30,
                   what="the backfill scheduler to plan the pending job")
    guessed = slurm.test_only_start(shape)
    real = hold_nodes(slurm, testbed, 2, 20)
    planned = slurm.wait_for(lambda s: (j := s.job(real)) and j.pending and j.start_time and j, 30,
                             what="the scheduler to plan the real job").start_time
    # Really: behind the pending job (ten minutes on every node), which goes first.
    assert planned >= slurm.job(ahead).start_time + 540
    assert guessed < planned - 60
