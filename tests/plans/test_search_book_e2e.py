"""`plans search` and `plans book` on the real testbed: offerings start where running jobs
end and go around reservations; a booking makes exactly its reservations, or none."""

from __future__ import annotations

import json

import pytest

from pitstop.plans.calendar import JOB_END_SLACK
from pitstop.slurm.parse import format_time

from .conftest import hold_nodes, wait_running

pytestmark = pytest.mark.slurm


def _pitstop_reservations(slurm):
    return {r.name: r for r in slurm.reservations() if r.name.startswith("pitstop-")}


def test_search_offers_the_jobs_end_and_an_earlier_split_and_book_creates_exactly_those(
        testbed, slurm, plans_cli):
    job = wait_running(slurm, hold_nodes(slurm, testbed, nodes=2, minutes=5))
    job_end = job.start_time + 300 + JOB_END_SLACK

    single = plans_cli.json("search", "--nodes", "3", "--duration", "6m")["offerings"]
    assert len(single) == 1 and len(single[0]["segments"]) == 1
    assert single[0]["start"] == job_end and single[0]["end"] == job_end + 360

    # Two nodes taken for two minutes, three minutes after the job ends: a window of 6m on
    # three nodes must wait until that is over, or be split around it.
    slurm.create_reservation("blocker", start=format_time(job_end + 180), duration="2", node_count=2)
    offerings = plans_cli.json("search", "--nodes", "3", "--duration", "6m", "--max-segments", "2")["offerings"]
    split, later = offerings
    assert [o["id"] for o in offerings] == ["o1", "o2"]
    assert [(s["start"] - job_end, s["end"] - job_end, s["nodes"]) for s in split["segments"]] == \
        [(0, 180, 3), (300, 480, 3)]
    assert split["gaps_s"] == [120] and split["span_s"] == 480
    assert len(later["segments"]) == 1 and later["start"] == job_end + 300
    assert split["end"] < later["end"]

    plan = plans_cli.json("book", "o1", "--name", "split")
    made = _pitstop_reservations(slurm)
    assert sorted(made) == ["pitstop-split-s1", "pitstop-split-s2"]
    for segment in split["segments"]:
        index = split["segments"].index(segment) + 1
        resv = made[f"pitstop-split-s{index}"]
        assert (resv.start_time, resv.end_time, resv.node_count) == (segment["start"], segment["end"], 3)
        assert "REPLACE_DOWN" in resv.flags and "MAINT" not in resv.flags
    assert [s["reservation"] for s in plan["segments"]] == ["pitstop-split-s1", "pitstop-split-s2"]
    assert plans_cli.json("status", "split")["state"] == "Scheduled"
    listed = plans_cli.run("list").stdout
    assert "split" in listed and "Scheduled" in listed


def test_a_booking_that_collides_half_way_leaves_no_reservation_behind(testbed, slurm, plans_cli):
    slurm.create_reservation("blocker", start="now+3minutes", duration="2", node_count=2)
    offerings = plans_cli.json("search", "--nodes", "3", "--duration", "6m", "--max-segments", "2")["offerings"]
    split = next(o for o in offerings if len(o["segments"]) == 2)
    second = split["segments"][1]
    # Someone else takes two nodes inside the second segment before we book.
    slurm.create_reservation("collider", start=format_time(second["start"] + 60), duration="1", node_count=2)

    proc = plans_cli.run("book", split["id"], "--name", "clash", ok=False)
    assert proc.returncode != 0
    assert "segment 2 of 2" in proc.stderr and "deleted again: pitstop-clash-s1" in proc.stderr
    assert _pitstop_reservations(slurm) == {}
    assert not (plans_cli.state_dir / "plans" / "clash.json").exists()
    assert json.loads(plans_cli.run("list", "--json").stdout) == []


def test_book_refuses_an_unknown_offering_and_a_bad_name(plans_cli):
    proc = plans_cli.run("book", "o9", "--name", "x", ok=False)
    assert proc.returncode != 0 and "plans search" in proc.stderr
    plans_cli.run("search", "--nodes", "1", "--duration", "2m")
    proc = plans_cli.run("book", "o1", "--name", "Bad Name", ok=False)
    assert proc.returncode != 0 and "plan name 'Bad Name'" in proc.stderr
    proc = plans_cli.run("search", "--nodes", "1", "--duration", "soon", ok=False)
    assert proc.returncode != 0 and "--duration" in proc.stderr
