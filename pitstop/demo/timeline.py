"""What the demo saw, and the goodput it adds up to: pure functions over observations.

The demo's watcher records every step it sees (with the attempt that ran it, since a
resumed run rewrites its progress file from the checkpoint on), every fault it injected,
and what the agents and Slurm did. From those alone this module computes the summary:
faults detected, nodes fenced, time to detect and to resume, steps redone, and ETTR —
productive training time over wall time — with the time lost split by cause.
"""

from __future__ import annotations

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
    nodes: list[str] = field(default_factory=list)


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


def summarize(steps: list[StepSeen], faults: list[FaultInjected], attempts: list[Attempt],
              started_at: float, finished_at: float, fenced_nodes: list[str]) -> Summary:
    """The demo's closing figures. `started_at` is when the job first started running."""
    wall = max(0.0, finished_at - started_at)
    final = unique_steps(steps)
    productive = sum(s.step_time for s in final.values())
    thrown_away = redone(steps)
    detect = [f.detected_at - f.at for f in faults if f.detected_at is not None]
    lost = {"detection": 0.0, "queue": 0.0, "start_up_and_load": 0.0,
            "redone_steps": sum(s.step_time for s in thrown_away)}
    resume_times = []
    by_number = {a.number: a for a in attempts}
    for attempt in attempts:
        if attempt.number == 0:
            continue
        before = by_number.get(attempt.number - 1)
        first = min((s.ended_at - s.step_time for s in steps if s.attempt == attempt.number), default=None)
        fault = _fault_before(faults, before.requeued_at if before else None)
        if fault is not None and fault.detected_at is not None and before and before.requeued_at:
            lost["detection"] += max(0.0, before.requeued_at - fault.at)
        if before and before.requeued_at and attempt.started_at:
            lost["queue"] += max(0.0, attempt.started_at - before.requeued_at)
        if attempt.started_at and first:
            lost["start_up_and_load"] += max(0.0, first - attempt.started_at)
        if fault is not None and first is not None:
            resume_times.append(first - fault.at)
    first_attempt = by_number.get(0)
    first_step = min((s.ended_at - s.step_time for s in steps if s.attempt == 0), default=None)
    if first_attempt and first_attempt.started_at and first_step:
        lost["start_up_and_load"] += max(0.0, first_step - first_attempt.started_at)
    lost["other"] = max(0.0, wall - productive - sum(lost.values()))
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
        "  time lost by cause    " + ", ".join(f"{k} {v:.1f}s" for k, v in summary.lost_s.items()),
    ]
    return "\n".join(lines)
