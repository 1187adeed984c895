"""The pure parts of training plans: spans, plan states, segment jobs' arguments, the
runtime's segment end, and the Plans view's layout."""

from __future__ import annotations

import pytest

from pitstop.model import Job, Reservation
from pitstop.plans import spans
from pitstop.plans.chart import JOB, PLAN_ROW, RESERVATION, SEGMENT, plan_chart
from pitstop.plans.jobs import find_submitted, marker, submit_args, time_limit_minutes
from pitstop.plans.status import plan_state
from pitstop.plans.store import Plan, PlanError, PlanRun, PlanSegment, PlanStore, check_name
from pitstop.recipes.segment import SegmentEnd, stop_wanted

NOW = 1_000_000.0


def _plan(run: bool = False) -> Plan:
    segments = [PlanSegment(1, NOW + 100, NOW + 400, 2, "pitstop-p-s1"),
                PlanSegment(2, NOW + 600, NOW + 900, 2, "pitstop-p-s2")]
    return Plan("p", "root", ["root"], None, NOW, segments,
                run=PlanRun("r", [], "/runs/p", "/work", 60.0) if run else None)


def test_spans_read_as_people_write_them():
    assert spans.parse_span("6m") == 360 and spans.parse_span("1h30m") == 5400
    assert spans.parse_span("14d") == 14 * 86400 and spans.parse_span("90") == 90
    assert spans.parse_moment("now+2h", now=NOW) == NOW + 7200
    assert spans.human_span(5400) == "1h30m" and spans.human_span(45) == "45s"
    for bad in ("soon", "6 minutes", "-1m", "0"):
        with pytest.raises(ValueError, match="duration"):
            spans.parse_span(bad)
    with pytest.raises(ValueError, match="not a time"):
        spans.parse_moment("next monday")


@pytest.mark.parametrize("offset, state, segment", [
    (0, "Scheduled", 1), (150, "Active", 1), (500, "Between segments", 2), (700, "Active", 2),
    (950, "Expired", None)])
def test_a_plan_is_scheduled_active_between_or_expired(offset, state, segment):
    got = plan_state(_plan(), NOW + offset)
    assert (got.state, got.segment) == (state, segment)


def test_cancelled_and_failed_plans_say_so():
    plan = _plan()
    plan.failed = "reservation lost"
    assert plan_state(plan, NOW).state == "Failed"
    plan.cancelled_at = NOW
    assert plan_state(plan, NOW).state == "Cancelled"


def test_plan_files_round_trip_and_bad_names_are_refused(tmp_path):
    store = PlanStore(tmp_path)
    plan = _plan(run=True)
    plan.note("booked", NOW)
    store.save(plan)
    assert store.load("p") == plan and [p.name for p in store.all()] == ["p"]
    with pytest.raises(PlanError, match="no plan named 'q'"):
        store.load("q")
    for bad in ("", "Upper", "has space", "x" * 41):
        with pytest.raises(PlanError, match="plan name"):
            check_name(bad)


def test_a_segment_job_ends_the_grace_before_its_segment_and_names_it():
    plan = _plan(run=True)
    first, second = plan.segments
    assert time_limit_minutes(first, 60, first.start) == 4  # 300 s - 60 s grace
    assert time_limit_minutes(first, 60, first.start + 200) == 1  # a late start, cut (never 0)
    args = submit_args(plan, second, after_job="41", now=NOW)
    assert "--reservation=pitstop-p-s2" in args and "--time=4" in args
    assert "--dependency=afterany:41" in args and f"--comment={marker(plan, second)}" in args
    assert f"--export=ALL,PITSTOP_SEGMENT_END={second.end:.0f},PITSTOP_SEGMENT_GRACE=60" in args
    jobs = [Job("7", comment="other"), Job("8", comment=marker(plan, second))]
    assert find_submitted(jobs, plan, second).job_id == "8"
    assert find_submitted(jobs, plan, first) is None


def test_the_runtime_stops_at_the_grace_point_or_on_a_signal():
    segment = SegmentEnd.from_env({"PITSTOP_SEGMENT_END": str(NOW + 100), "PITSTOP_SEGMENT_GRACE": "30"})
    assert segment.stop_at == NOW + 70
    assert stop_wanted(None, segment, now=NOW + 69) is None
    assert "grace point" in stop_wanted(None, segment, now=NOW + 70)
    assert stop_wanted("SIGUSR1", None) == "SIGUSR1"
    assert SegmentEnd.from_env({}) is None
    with pytest.raises(ValueError, match="PITSTOP_SEGMENT_END"):
        SegmentEnd.from_env({"PITSTOP_SEGMENT_END": "tomorrow"})


def test_the_chart_lays_out_jobs_reservations_segments_and_the_now_line():
    plan = _plan(run=True)
    jobs = [Job("5", state="RUNNING", nodes=["node1"], start_time=NOW - 50, time_limit=150),
            Job("6", state="PENDING", nodes=[])]
    resvs = [Reservation("pitstop-p-s1", start_time=NOW + 100, end_time=NOW + 400, nodes=["node1", "node2"])]
    chart = plan_chart(["node1", "node2"], jobs, resvs, plan, NOW + 50, width=100, start=NOW, end=NOW + 1000)
    rows = {r.name: r for r in chart.rows}
    assert list(rows) == ["node1", "node2", PLAN_ROW]
    assert [(b.kind, b.first_col, b.last_col) for b in rows["node1"].bars] == [(JOB, 0, 9), (RESERVATION, 10, 39)]
    assert [(b.kind, b.label, b.first_col, b.last_col) for b in rows[PLAN_ROW].bars] == \
        [(SEGMENT, "s1", 10, 39), (SEGMENT, "s2", 60, 89)]
    assert chart.now_col == 5
    assert (chart.countdown.what, chart.countdown.segment, chart.countdown.seconds) == ("start", 1, 50)
    active = plan_chart(["node1"], [], [], plan, NOW + 300, width=10, start=NOW, end=NOW + 1000)
    assert (active.countdown.what, active.countdown.seconds) == ("pause", 40)  # end - grace
    assert plan_chart(["node1"], [], [], plan, NOW + 2000, start=NOW, end=NOW + 1000).now_col is None


def test_the_watch_service_unit_runs_the_watch_on_the_state_dir():
    from pitstop.plans.service import watch_unit

    unit = watch_unit("/shared/pitstop", python="/opt/venv/bin/python", interval=20, slurm_conf="/etc/slurm/slurm.conf")
    assert "ExecStart=/opt/venv/bin/python -m pitstop plans watch --state-dir /shared/pitstop --interval 20\n" in unit
    assert "Environment=SLURM_CONF=/etc/slurm/slurm.conf\n" in unit and "Restart=always\n" in unit
    assert unit.index("[Unit]") < unit.index("[Service]") < unit.index("[Install]")
