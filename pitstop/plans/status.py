"""Where a plan stands now: Scheduled, Active (which segment), Between segments, Expired,
Failed or Cancelled — one pure function, so the CLI, `plans watch` and the TUI agree."""

from __future__ import annotations

from dataclasses import dataclass

from pitstop.plans.store import Plan

SCHEDULED, ACTIVE, BETWEEN, EXPIRED, FAILED, CANCELLED = (
    "Scheduled", "Active", "Between segments", "Expired", "Failed", "Cancelled")


@dataclass(frozen=True)
class PlanState:
    state: str
    segment: int | None = None  # the active segment, or the next one when scheduled/between
    next_change: float | None = None  # when the state changes next (a start or an end)

    @property
    def label(self) -> str:
        if self.state == ACTIVE:
            return f"{ACTIVE} (segment {self.segment})"
        return self.state


def plan_state(plan: Plan, now: float) -> PlanState:
    if plan.cancelled_at is not None:
        return PlanState(CANCELLED)
    if plan.failed:
        return PlanState(FAILED)
    for segment in plan.segments:
        if now < segment.start:
            first = segment is plan.segments[0]
            return PlanState(SCHEDULED if first else BETWEEN, segment.index, segment.start)
        if now < segment.end:
            return PlanState(ACTIVE, segment.index, segment.end)
    return PlanState(EXPIRED)
