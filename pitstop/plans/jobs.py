"""One Slurm job per segment of a plan, submitted exactly once.

Each job is the run's own `job.sbatch` with the segment's reservation, a time limit that
ends the grace before the segment does, `PITSTOP_SEGMENT_END`/`PITSTOP_SEGMENT_GRACE`
in its environment and a dependency on the previous segment's job. The job carries a
comment naming its plan and segment, so that after a crash between `sbatch` and the plan
file's write, the next look finds the job instead of submitting a second one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from pitstop.model import Job
from pitstop.plans.store import Plan, PlanSegment, PlanStore
from pitstop.slurm import Slurm

SCRIPT = "job.sbatch"
SEGMENT_END_ENV = "PITSTOP_SEGMENT_END"  # read by pitstop.recipes.segment in the job
SEGMENT_GRACE_ENV = "PITSTOP_SEGMENT_GRACE"


def marker(plan: Plan, segment: PlanSegment) -> str:
    return f"pitstop-plan:{plan.name}:s{segment.index}"


def time_limit_minutes(segment: PlanSegment, grace_s: float, start: float) -> int:
    """Whole minutes (Slurm's resolution) from `start` to the grace point, at least one."""
    return max(1, math.floor((segment.end - grace_s - start) / 60))


def submit_args(plan: Plan, segment: PlanSegment, after_job: str | None, now: float) -> list[str]:
    assert plan.run is not None
    start = max(segment.start, now)
    args = [f"--reservation={segment.reservation}",
            f"--time={time_limit_minutes(segment, plan.run.grace_s, start)}",
            f"--comment={marker(plan, segment)}",
            f"--export=ALL,{SEGMENT_END_ENV}={segment.end:.0f},{SEGMENT_GRACE_ENV}={plan.run.grace_s:g}"]
    if after_job:
        args.append(f"--dependency=afterany:{after_job}")
    return args


def find_submitted(jobs: list[Job], plan: Plan, segment: PlanSegment) -> Job | None:
    """The job Slurm already has for this segment (by its comment), if any."""
    tag = marker(plan, segment)
    return next((j for j in jobs if j.comment == tag), None)


def submit_missing(slurm: Slurm, store: PlanStore, plan: Plan, now: float | None = None) -> list[str]:
    """Submit the job of every segment that has none and has not ended, in order; the plan
    file is saved after each submission. Returns what was done, one line per job."""
    if plan.run is None:
        return []
    now = time.time() if now is None else now
    jobs = slurm.jobs()
    by_id = {j.job_id: j for j in jobs}
    done: list[str] = []
    previous: str | None = None
    fresh: set[str] = set()  # submitted in this pass, not yet in `jobs`
    for segment in plan.segments:
        if segment.job_id is None:
            found = find_submitted(jobs, plan, segment)
            if found is not None:
                segment.job_id, segment.submitted_at = found.job_id, found.submit_time or now
                done.append(f"s{segment.index}: adopted job {found.job_id} (submitted before a restart)")
            elif segment.end - plan.run.grace_s > now:
                waiting_on = previous in fresh or (previous in by_id and not by_id[previous].finished)
                after = previous if previous and waiting_on else None
                script = Path(plan.run.run_dir) / SCRIPT
                segment.job_id = slurm.submit(script, args=submit_args(plan, segment, after, now),
                                              cwd=plan.run.chdir)
                segment.submitted_at = now
                fresh.add(segment.job_id)
                done.append(f"s{segment.index}: submitted job {segment.job_id}"
                            + (f" after job {after}" if after else ""))
            if segment.job_id is not None:
                plan.note(done[-1], now)
                store.save(plan)
        previous = segment.job_id or previous
    return done


def cut_late_limits(slurm: Slurm, plan: Plan, now: float | None = None) -> list[str]:
    """A segment's job that started late (a requeue, a slow start) has its time limit cut so
    that it ends at the grace point, not past the reservation's end."""
    if plan.run is None:
        return []
    done = []
    for segment in plan.segments:
        if not segment.job_id:
            continue
        job = slurm.job(segment.job_id)
        if job is None or not job.running or not job.start_time or job.time_limit is None:
            continue
        grace_point = segment.end - plan.run.grace_s
        if job.start_time + job.time_limit > grace_point + 60:
            minutes = max(1, math.floor((grace_point - job.start_time) / 60))
            if minutes * 60 < job.time_limit:
                slurm.update_job(segment.job_id, TimeLimit=str(minutes))
                done.append(f"s{segment.index}: cut job {segment.job_id}'s time limit to {minutes} min")
    return done
