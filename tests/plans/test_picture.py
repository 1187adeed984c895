"""The Plans view drawn as text: bars in the right columns, the now-line, the countdown."""

from __future__ import annotations

from pitstop.model import Job, Reservation
from pitstop.plans.picture import draw, pictures
from pitstop.plans.chart import plan_chart
from pitstop.plans.store import Plan

NOW = 1_800_000_000.0


def _plan() -> Plan:
    return Plan.from_dict({"name": "p1", "owner": "root", "created_at": NOW - 60, "users": ["root"], "partition": None,
                           "segments": [{"index": 1, "start": NOW + 600, "end": NOW + 1200, "nodes": 2,
                                         "reservation": "pitstop-p1-s1"},
                                        {"index": 2, "start": NOW + 1800, "end": NOW + 2400, "nodes": 2,
                                         "reservation": "pitstop-p1-s2"}]})


def test_jobs_reservations_segments_and_now_land_in_their_columns():
    job = Job(job_id="7", name="j", user="u", state="RUNNING", nodes=["node1"], start_time=NOW - 100,
              time_limit=600)
    resv = Reservation(name="pitstop-p1-s1", start_time=NOW + 600, end_time=NOW + 1200, nodes=["node2"])
    chart = plan_chart(["node1", "node2"], [job], [resv], _plan(), NOW, width=30, start=NOW - 300, end=NOW + 2700)
    lines = draw(chart)
    assert [line.split()[0] for line in lines] == ["node1", "node2", "plan"]
    cols = [line[11:] for line in lines]
    # 30 columns over 3,000 s: 100 s a column; now is column 3.
    assert cols[0][2:9] == "=" * 7 and cols[0][9] == " "  # the job, from 100 s ago to its limit
    assert cols[1][3] == "|" and cols[1][9:15] == "#" * 6  # now, then the reservation
    assert cols[2][9:15] == "S" * 6 and cols[2][21:27] == "S" * 6  # both segments


def test_a_picture_carries_the_state_and_the_countdown_to_the_next_start():
    (picture,) = pictures([_plan()], ["node1"], [], [], NOW, width=20)
    assert picture["name"] == "p1" and picture["label"] == "Scheduled"
    assert picture["countdown"]["what"] == "start" and picture["countdown"]["segment"] == 1
    assert round(picture["countdown"]["seconds"]) == 600 and "10m" in picture["countdown"]["text"]
    assert len(picture["lines"]) == 3  # node1, plan, the axis
