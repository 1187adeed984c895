"""What the demo saw, and the goodput it adds up to: pure functions over observations.

The demo's watcher records every step it sees (with the attempt that ran it, since a
resumed run rewrites its progress file from the checkpoint on), every fault it injected,
and what the agents and Slurm did. From those alone this module computes the summary:
faults detected, nodes fenced, time to detect and to resume, steps redone, and ETTR —
productive training time over wall time — with the time lost split by cause. The split
is a partition: every second of the wall time is productive or exactly one cause, so the
causes add up to wall − productive and none is counted twice.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepSeen:
    step: int
    attempt: int  # the job's restart count when it ran
    loss: float
    step_time: float
    ended_at: float  # when the step finished (its progress record's time)


@dataclass
class FaultInjected:
    kind: str  # xid79, xid48, nccl, stall, slurmd
    node: str
    at: float
    detail: str = ""
    detected_at: float | None = None  # the first finding (or Slurm's own notice) after it
    detected_by: str = ""
    fenced: bool = False


@dataclass
class Attempt:
    """One run of the job: from Slurm starting it to its end."""

    number: int
    started_at: float | None = None  # Slurm's start time of this attempt
    requeued_at: float | None = None  # when it was taken off its nodes
    resumed_from: int = 0  # the checkpoint step it loaded (0: from scratch)
    load_s: float = 0.0  # how long that load took, as the runtime reported it
    nodes: list[str] = field(default_factory=list)
    restart_count: int = 0  # Slurm's requeues of the job when it started (a change: a requeue)


@dataclass
class Summary:
    wall_s: float
    productive_s: float
    ettr: float
    faults: int
    detected: int
    fenced_nodes: list[str]
    healthy_fenced: list[str]
    time_to_detect_s: list[float]
    time_to_resume_s: list[float]
    steps_redone: int
    lost_s: dict[str, float]
    final_step: int
    restarts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unique_steps(steps: list[StepSeen]) -> dict[int, StepSeen]:
    """The run each step counts from: the last attempt that ran it."""
    final: dict[int, StepSeen] = {}
    for seen in sorted(steps, key=lambda s: (s.attempt, s.ended_at)):
        final[seen.step] = seen
    return final


def redone(steps: list[StepSeen]) -> list[StepSeen]:
    """Steps that ran and were later run again: the work a fault threw away."""
    final = unique_steps(steps)
    return [s for s in steps if final[s.step] is not s]


CAUSES = ("detection", "queue", "start_up", "checkpoint_load", "redone_steps", "other")
HUNG_FACTOR = 3.0  # a step this long (times the median) that a fault fell in hung for the excess


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    cause: str  # "productive" or one of CAUSES


def spans(steps: list[StepSeen], faults: list[FaultInjected], attempts: list[Attempt],
          finished_at: float) -> list[Span]:
    """What each stretch of the run was spent on, from the observations alone.

    A step is productive when its run is the one that counts, else redone; a step that a
    fault fell in and that took over HUNG_FACTOR times the median hung for the excess. Before an
    attempt's first step: start-up, the last `load_s` of it checkpoint load. After its
    last step: the step under way until the fault (redone), detection from the fault to
    its first finding, then the queue until the next attempt starts (the step ending,
    and for a requeue the old job completing and scheduling). Stretches may
    overlap or leave gaps here; `partition` settles both.
    """
    final = unique_steps(steps)
    typical = statistics.median(s.step_time for s in steps) if steps else 0.0
    found = []
    for seen in steps:
        start, kind = seen.ended_at - seen.step_time, "productive" if final[seen.step] is seen else "redone_steps"
        hung_until = seen.ended_at - typical
        fault = next((f for f in faults if start <= f.at <= hung_until
                      and (f.detected_at is None or f.detected_at >= f.at)), None)
        if fault is not None and seen.step_time > HUNG_FACTOR * typical > 0:
            # A step that hung on the fault (a stopped rank blocks every rank's collective)
            # computed for a typical step's time: the rest was the fault going unnoticed,
            # then the wait for the requeue to stop it. A step merely slow stays productive.
            noticed = hung_until if fault.detected_at is None else min(hung_until, fault.detected_at)
            found.append(Span(start, noticed, "detection"))
            found.append(Span(noticed, hung_until, "queue"))
            start = hung_until
        found.append(Span(start, seen.ended_at, kind))
    ordered = sorted((a for a in attempts if a.started_at is not None), key=lambda a: a.started_at)
    for index, attempt in enumerate(ordered):
        ends = ordered[index + 1].started_at if index + 1 < len(ordered) else finished_at
        own = [s for s in steps if s.attempt == attempt.number]
        first = min((s.ended_at - s.step_time for s in own), default=None)
        last = max((s.ended_at for s in own), default=None)
        if first is None:
            found.append(Span(attempt.started_at, attempt.requeued_at or ends, "start_up"))
            last = attempt.requeued_at or ends
        else:
            load = min(max(0.0, attempt.load_s), max(0.0, first - attempt.started_at))
            found.append(Span(attempt.started_at, first - load, "start_up"))
            found.append(Span(first - load, first, "checkpoint_load"))
        fault = next((f for f in sorted(faults, key=lambda f: f.at)
                      if attempt.started_at <= f.at < ends), None)
        waiting = "queue" if index + 1 < len(ordered) else "other"
        if fault is None:
            found.append(Span(last, ends, waiting))
            continue
        noticed = fault.detected_at if fault.detected_at is not None else (attempt.requeued_at or ends)
        # The step under way when the fault came is thrown away: that work is redone.
        found.append(Span(last, min(fault.at, noticed), "redone_steps"))
        found.append(Span(max(last, fault.at), noticed, "detection"))
        found.append(Span(max(last, noticed), ends, waiting))
    return found


def partition(found: list[Span], started_at: float, finished_at: float) -> dict[str, float]:
    """Seconds per cause (and "productive") such that every second of the wall time is
    counted exactly once: overlaps go to the stretch that began first, gaps to "other"."""
    totals = {"productive": 0.0, **{cause: 0.0 for cause in CAUSES}}
    cursor = started_at
    for span in sorted(found, key=lambda s: (s.start, s.end)):
        start, end = max(span.start, cursor), min(span.end, finished_at)
        if end <= start:
            continue
        totals["other"] += start - cursor
        totals[span.cause] += end - start
        cursor = end
    totals["other"] += max(0.0, finished_at - cursor)
    return totals


def summarize(steps: list[StepSeen], faults: list[FaultInjected], attempts: list[Attempt],
              started_at: float, finished_at: float, fenced_nodes: list[str]) -> Summary:
    """The demo's closing figures. `started_at` is when the job first started running;
    productive time and the losses by cause add up to the wall time exactly."""
    wall = max(0.0, finished_at - started_at)
    final = unique_steps(steps)
    thrown_away = redone(steps)
    detect = [f.detected_at - f.at for f in faults if f.detected_at is not None]
    lost = partition(spans(steps, faults, attempts, finished_at), started_at, max(started_at, finished_at))
    productive = lost.pop("productive")
    resume_times = []
    for attempt in attempts:
        if attempt.number == 0:
            continue
        before = next((a for a in attempts if a.number == attempt.number - 1), None)
        first = min((s.ended_at - s.step_time for s in steps if s.attempt == attempt.number), default=None)
        fault = _fault_before(faults, before.requeued_at if before else None)
        if fault is not None and first is not None:
            resume_times.append(first - fault.at)
    targets = {f.node for f in faults}
    return Summary(
        wall_s=wall, productive_s=productive, ettr=productive / wall if wall else 0.0,
        faults=len(faults), detected=sum(1 for f in faults if f.detected_at is not None),
        fenced_nodes=sorted(set(fenced_nodes)), healthy_fenced=sorted(set(fenced_nodes) - targets),
        time_to_detect_s=detect, time_to_resume_s=resume_times, steps_redone=len(thrown_away),
        lost_s=lost, final_step=max(final) if final else 0, restarts=max((a.number for a in attempts), default=0))


def _fault_before(faults: list[FaultInjected], moment: float | None) -> FaultInjected | None:
    if moment is None:
        return None
    earlier = [f for f in faults if f.at <= moment]
    return max(earlier, key=lambda f: f.at) if earlier else None


def format_summary(summary: Summary) -> str:
    def seconds(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}s" for v in values) or "-"

    lines = [
        "summary",
        f"  faults injected       {summary.faults}",
        f"  faults detected       {summary.detected}",
        f"  nodes fenced          {', '.join(summary.fenced_nodes) or '-'}"
        f"  (healthy nodes fenced: {', '.join(summary.healthy_fenced) or 'none'})",
        f"  time to detect        {seconds(summary.time_to_detect_s)}",
        f"  time to resume        {seconds(summary.time_to_resume_s)}  (fault to the first step after it)",
        f"  restarts              {summary.restarts}",
        f"  steps redone          {summary.steps_redone}",
        f"  final step            {summary.final_step}",
        f"  wall time             {summary.wall_s:.1f}s, productive {summary.productive_s:.1f}s",
        f"  ETTR                  {summary.ettr:.3f}",
        "  time lost by cause    " + ", ".join(f"{k} {v:.1f}s" for k, v in summary.lost_s.items())
        + f"  (together {sum(summary.lost_s.values()):.1f}s = wall - productive)",
    ]
    return "\n".join(lines)
