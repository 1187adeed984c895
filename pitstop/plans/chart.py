"""The Plans view's picture, laid out as data: one row per node with its running jobs (to
their projected end), its reservations and the plan's segments, a now-line and a
countdown to the next pause or start. Pure: the TUI only draws what this returns, so the
layout is tested without a screen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from pitstop.model import Job, Reservation
from pitstop.plans.status import ACTIVE, plan_state
from pitstop.plans.store import Plan

JOB, RESERVATION, SEGMENT = "job", "reservation", "segment"
PLAN_ROW = "plan"


@dataclass(frozen=True)
class Bar:
    kind: str  # job, reservation, segment
    label: str
    start: float
    end: float  # math.inf for a job without a time limit
    first_col: int
    last_col: int  # inclusive


@dataclass
class Row:
    name: str  # a node, or "plan" for the plan's own segments
    bars: list[Bar] = field(default_factory=list)


@dataclass(frozen=True)
class Countdown:
    what: str  # "pause" (a segment ends), "start" (the next segment begins)
    segment: int
    at: float
    seconds: float


@dataclass
class Chart:
    start: float
    end: float
    width: int
    rows: list[Row]
    now_col: int | None  # None when now is outside the window
    countdown: Countdown | None


def column(t: float, start: float, end: float, width: int) -> int:
    """The column of moment `t` in a window of `width` columns over [start, end)."""
    if t <= start:
        return 0
    if t >= end:
        return width - 1
    return min(width - 1, int((t - start) / (end - start) * width))


def _bar(kind: str, label: str, start: float, end: float, window: tuple[float, float, int]) -> Bar | None:
    w_start, w_end, width = window
    if end <= w_start or start >= w_end:
        return None
    return Bar(kind, label, start, end, column(start, w_start, w_end, width),
               column(min(end, w_end) - 1e-9, w_start, w_end, width))


def projected_end(job: Job) -> float:
    if job.end_time:
        return job.end_time
    if job.start_time and job.time_limit:
        return job.start_time + job.time_limit
    return math.inf


def countdown(plan: Plan, now: float) -> Countdown | None:
    """Until the running segment pauses (its grace point when a run is attached) or the next
    segment starts."""
    state = plan_state(plan, now)
    if state.segment is None:
        return None
    segment = plan.segment(state.segment)
    if state.state == ACTIVE:
        at = segment.end - (plan.run.grace_s if plan.run else 0.0)
        return Countdown("pause", segment.index, at, max(0.0, at - now))
    return Countdown("start", segment.index, segment.start, max(0.0, segment.start - now))


def plan_chart(nodes: Iterable[str], jobs: Iterable[Job], reservations: Iterable[Reservation],
               plan: Plan | None, now: float, width: int = 80, start: float | None = None,
               end: float | None = None) -> Chart:
    """Lay out [start, end) (default: from now to past the plan's last segment) over
    `width` columns."""
    if width < 2:
        raise ValueError("a chart needs at least two columns")
    start = now if start is None else start
    if end is None:
        last = max([now + 3600] + ([s.end for s in plan.segments] if plan else []))
        end = start + (last - start) * 1.05
    window = (start, end, width)
    rows = {name: Row(name) for name in nodes}
    for job in jobs:
        if not job.running:
            continue
        for node in job.nodes:
            bar = _bar(JOB, job.job_id, job.start_time or now, projected_end(job), window)
            if bar and node in rows:
                rows[node].bars.append(bar)
    for resv in reservations:
        for node in resv.nodes:
            bar = _bar(RESERVATION, resv.name, resv.start_time or now, resv.end_time or math.inf, window)
            if bar and node in rows:
                rows[node].bars.append(bar)
    plan_row = Row(PLAN_ROW)
    if plan is not None:
        for segment in plan.segments:
            bar = _bar(SEGMENT, f"s{segment.index}", segment.start, segment.end, window)
            if bar:
                plan_row.bars.append(bar)
    for row in rows.values():
        row.bars.sort(key=lambda b: (b.first_col, b.kind))
    now_col = column(now, start, end, width) if start <= now < end else None
    return Chart(start, end, width, [*rows.values(), plan_row], now_col,
                 countdown(plan, now) if plan else None)
