"""Changing a booked plan: `extend` its last segment after checking the calendar, and
`cancel` it (Slurm refuses to delete a reservation with running jobs, so cancel deletes
what it can and says what it could not, and why)."""

from __future__ import annotations

import time

from pitstop.plans.calendar import calendar_from
from pitstop.plans.store import Plan, PlanError, PlanStore
from pitstop.slurm import Slurm, SlurmError
from pitstop.slurm.parse import format_time


def extend(slurm: Slurm, store: PlanStore, name: str, by_s: float, now: float | None = None) -> Plan:
    """Move the last segment's end `by_s` later, if its nodes are free for that time."""
    now = time.time() if now is None else now
    plan = store.load(name)
    last = plan.segments[-1]
    if plan.cancelled_at is not None or last.end <= now:
        raise PlanError(f"plan {name} has no segment left to extend")
    live = slurm.reservations()
    mine = next((r for r in live if r.name == last.reservation), None)
    if mine is None:
        raise PlanError(f"{last.reservation} is missing in Slurm (`plans watch` re-creates it)")
    others = [r for r in live if r.name != last.reservation]
    calendar = calendar_from(slurm.snapshot(), others, now, partition=plan.partition)
    new_end = last.end + by_s
    blocked = sorted({b.node for b in calendar.busy
                      if b.node in mine.nodes and b.start < new_end and b.end > last.end})
    missing = [n for n in mine.nodes if n not in calendar.nodes]
    if blocked or missing:
        raise PlanError(f"cannot extend {last.reservation} to {format_time(new_end)}: "
                        f"{', '.join(blocked + missing)} not free until then")
    slurm.update_reservation(last.reservation, EndTime=format_time(new_end))
    last.end = new_end
    plan.note(f"extended {last.reservation} to {format_time(new_end)}", now)
    store.save(plan)
    return plan


def cancel(slurm: Slurm, store: PlanStore, name: str, now: float | None = None) -> tuple[Plan, list[str]]:
    """Cancel the plan's jobs that have not started and delete its reservations (Slurm
    refuses while a job runs in one, or still waits for it); returns
    what could not be undone, one line each (empty when everything was)."""
    now = time.time() if now is None else now
    plan = store.load(name)
    live = {r.name for r in slurm.reservations()}
    problems: list[str] = []
    waiting = [j for s in plan.segments if s.job_id and (j := slurm.job(s.job_id)) and not j.running
               and not j.finished]
    for job in waiting:
        slurm.cancel(job.job_id)
    # A reservation that a waiting job still names is "in use" too: let the cancels land.
    slurm.wait_for(lambda s: all((j := s.job(w.job_id)) is None or j.finished for w in waiting), 30,
                   what="the plan's waiting jobs to be cancelled")
    for segment in plan.segments:
        if segment.reservation not in live:
            continue
        try:
            slurm.delete_reservation(segment.reservation)
        except SlurmError as exc:
            why = "a job is running in it" if "in use" in exc.stderr else exc.stderr
            problems.append(f"{segment.reservation}: not deleted: {why}")
    plan.cancelled_at = now
    plan.note("cancelled" + (f"; {'; '.join(problems)}" if problems else ""), now)
    store.save(plan)
    return plan, problems
