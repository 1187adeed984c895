"""The Plans view as text: each plan's chart (`pitstop.plans.chart`) drawn in characters,
with its state and countdown. One function serves `pitstop plans chart` and the TUI
(locally it calls this; over SSH it runs the command with --json), so the login node and
the laptop draw the same picture.

Marks: `=` a running job until its projected end, `#` a reservation, `S` the plan's own
segments (on the `plan` row), `|` now; where a job and a reservation share a column the
reservation wins (it is what the plan is about).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from pitstop.model import Job, Reservation
from pitstop.plans import spans
from pitstop.plans.chart import JOB, RESERVATION, SEGMENT, Chart, plan_chart
from pitstop.plans.status import plan_state
from pitstop.plans.store import Plan

MARKS = {JOB: "=", RESERVATION: "#", SEGMENT: "S"}
_PRECEDENCE = {JOB: 0, RESERVATION: 1, SEGMENT: 2}
NAME_WIDTH = 10


def draw(chart: Chart) -> list[str]:
    """One line a row: the row's name, then `chart.width` columns of marks."""
    lines = []
    for row in chart.rows:
        cells = [" "] * chart.width
        rank = [-1] * chart.width
        for bar in row.bars:
            for col in range(bar.first_col, bar.last_col + 1):
                if _PRECEDENCE[bar.kind] > rank[col]:
                    cells[col], rank[col] = MARKS[bar.kind], _PRECEDENCE[bar.kind]
        if chart.now_col is not None and cells[chart.now_col] == " ":
            cells[chart.now_col] = "|"
        lines.append(f"{row.name[:NAME_WIDTH]:<{NAME_WIDTH}} {''.join(cells)}")
    return lines


def axis(chart: Chart) -> str:
    """The time axis under the rows: the window's start and end, in UTC."""
    left, right = _clock(chart.start), _clock(chart.end)
    gap = max(1, chart.width - len(left) - len(right))
    return f"{'':<{NAME_WIDTH}} {left}{' ' * gap}{right}"


def _clock(epoch: float) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(epoch))


def pictures(plans: Iterable[Plan], nodes: Iterable[str], jobs: Iterable[Job],
             reservations: Iterable[Reservation], now: float, width: int = 72) -> list[dict[str, Any]]:
    """Every plan's picture as data: {"name", "label", "countdown", "lines"} (the lines
    are the chart drawn, its axis last)."""
    nodes, jobs, reservations = list(nodes), list(jobs), list(reservations)
    out = []
    for plan in plans:
        chart = plan_chart(nodes, jobs, reservations, plan, now, width=width)
        state = plan_state(plan, now)
        countdown = None
        if chart.countdown is not None:
            countdown = {"what": chart.countdown.what, "segment": chart.countdown.segment,
                         "at": chart.countdown.at, "seconds": chart.countdown.seconds,
                         "text": f"{chart.countdown.what} of segment {chart.countdown.segment} in "
                                 f"{spans.human_span(chart.countdown.seconds)}"}
        out.append({"name": plan.name, "label": state.label, "countdown": countdown,
                    "lines": [*draw(chart), axis(chart)]})
    return out


def from_cluster(slurm, store, now: float | None = None, width: int = 72) -> list[dict[str, Any]]:
    """The pictures of every plan in `store`, from one snapshot and one reservation read."""
    now = time.time() if now is None else now
    snapshot = slurm.snapshot()
    return pictures(store.all(), [n.name for n in snapshot.nodes], snapshot.jobs, slurm.reservations(),
                    now, width=width)
