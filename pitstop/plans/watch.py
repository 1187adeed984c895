"""`plans watch`: make Slurm match the plan files, once or every interval.

Each pass re-creates a booked reservation that went missing, deletes `pitstop-`
reservations no plan owns, notes a segment that lost nodes, marks the plan Failed when a
segment's job failed, submits each segment's job exactly once (see `pitstop.plans.jobs`) and cuts the time limit of a job that started
late. All it knows is in the plan files and in Slurm, so killing and restarting it
repeats nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from pitstop.plans.book import BookingError, reserve
from pitstop.plans.jobs import cut_late_limits, submit_missing
from pitstop.plans.status import ACTIVE, BETWEEN, SCHEDULED, plan_state
from pitstop.plans.store import RESERVATION_PREFIX, Plan, PlanError, PlanStore
from pitstop.slurm import Slurm, SlurmError

log = logging.getLogger(__name__)


def reconcile(slurm: Slurm, store: PlanStore, now: float | None = None) -> list[str]:
    """One pass; returns what it did, one line each."""
    now = time.time() if now is None else now
    plans = store.all()
    live = {r.name: r for r in slurm.reservations()}
    nodes = {n.name: n for n in slurm.nodes()}
    done: list[str] = []
    for plan in plans:
        if plan_state(plan, now).state not in {SCHEDULED, ACTIVE, BETWEEN}:
            continue
        done += [f"{plan.name}: {line}" for line in _reservations(slurm, store, plan, live, nodes, now)]
        failed = _failed_job(slurm, plan)
        if failed:
            plan.failed = failed
            plan.note(f"failed: {failed}", now)
            store.save(plan)
            done.append(f"{plan.name}: failed: {failed}")
            continue
        try:
            done += [f"{plan.name}: {line}" for line in submit_missing(slurm, store, plan, now)]
            done += [f"{plan.name}: {line}" for line in cut_late_limits(slurm, plan, now)]
        except SlurmError as exc:
            done.append(f"{plan.name}: job submission failed: {exc}")
    owned = {s.reservation for p in plans for s in p.segments}
    for name in sorted(set(live) - owned):
        if not name.startswith(RESERVATION_PREFIX):
            continue
        try:
            slurm.delete_reservation(name)
            done.append(f"deleted orphan reservation {name} (no plan owns it)")
        except SlurmError as exc:
            done.append(f"orphan reservation {name} not deleted: {exc.stderr}")
    for line in done:
        log.info("%s", line)
    return done


def _failed_job(slurm: Slurm, plan: Plan) -> str:
    """Why the attached run cannot go on (a segment's job ended other than by completing or
    timing out at its segment's end), or ''."""
    for segment in plan.segments:
        job = slurm.job(segment.job_id) if segment.job_id else None
        if job is not None and job.finished and job.state not in {"COMPLETED", "CANCELLED", "TIMEOUT"}:
            return f"s{segment.index}: job {job.job_id} ended {job.state} (exit {job.exit_code or '?'})"
    return ""


def _reservations(slurm: Slurm, store: PlanStore, plan: Plan, live: dict, nodes: dict,
                  now: float) -> list[str]:
    done = []
    for segment in plan.segments:
        if segment.end <= now:
            continue
        resv = live.get(segment.reservation)
        if resv is None:
            try:
                reserve(slurm, segment, plan.users, plan.partition, now)
                line = f"re-created missing reservation {segment.reservation}"
            except (SlurmError, BookingError) as exc:
                line = f"could not re-create {segment.reservation}: {getattr(exc, 'stderr', '') or exc}"
            done.append(line)
            plan.note(line, now)
            store.save(plan)
            continue
        unusable = sorted(n for n in resv.nodes if n in nodes and not nodes[n].available)
        short = segment.nodes - (len(resv.nodes) - len(unusable))
        if short > 0:
            line = (f"{segment.reservation} lost {short} node(s)"
                    + (f": {', '.join(unusable)} unusable" if unusable else ""))
            if not plan.events or plan.events[-1]["what"] != line:
                plan.note(line, now)
                store.save(plan)
                done.append(line)
    return done


def watch(slurm: Slurm, store: PlanStore, interval: float, stop: threading.Event | None = None) -> None:
    """Reconcile every `interval` seconds until SIGTERM/SIGINT (or `stop` is set)."""
    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        try:
            reconcile(slurm, store)
        except (SlurmError, PlanError, OSError) as exc:
            log.warning("reconcile failed, trying again in %.0fs: %s", interval, exc)
        stop.wait(interval)
