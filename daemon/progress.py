"""The progress source: a training step that stops advancing is a hang.

A hung collective waits out NCCL's 10-minute timeout (gloo's 30) on every rank before
anything says so. The training runtime writes a heartbeat after every step
(`pitstop.rundir.read_heartbeat`: {"step", "time", "step_time", ...}); this source
watches it and reports a `step_stall` when the step has not advanced for longer than
`max(floor_s, k × median of the recent step times)`, once per stalled step. Before any
step time is known (the first step compiles, loads a checkpoint) the floor alone holds.

`StallDetector.observe(heartbeat, now)` is pure given its own small state: the agent
reads the heartbeat (the thin I/O edge, `ProgressWatcher`) and passes the time in.
"""

from __future__ import annotations

import json
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pitstop.model import Finding
from pitstop.rundir import current_attempt, read_heartbeat

EVIDENCE_CAP = 512


def stall_limit(step_times: list[float], k: float, floor_s: float) -> float:
    """How long a step may take before it counts as stalled."""
    if not step_times:
        return floor_s
    return max(floor_s, k * statistics.median(step_times))


@dataclass
class StallDetector:
    """Watches one job's heartbeats; `observe` returns a finding when its step stalls."""

    node: str
    job_id: str
    k: float = 5.0
    floor_s: float = 300.0
    keep_steps: int = 32
    # Start-up (imports, rendezvous, loading a checkpoint) may take longer than a step:
    # a run that makes no first step for this long after it started is stalled too.
    # None: startup_factor x floor_s.
    startup_s: float | None = None
    startup_factor: float = 4.0
    # When the job started (or the agent began watching it): a heartbeat left over from
    # before, e.g. by the run before a requeue, does not start the clock earlier.
    watching_since: float | None = None
    # A (re)start's first steps are slow (cold caches, lazy set-up, a spare's neighbours
    # starting up): for the first `settle_steps` steps the limit is at least
    # settle_factor x floor_s (1: no allowance; the agent's watcher gives 2).
    settle_steps: int = 3
    settle_factor: float = 1.0
    steps_seen: int = 0  # steps this attempt has advanced since its first beat
    step_times: deque = field(default_factory=deque)
    step: int | None = None
    advanced_at: float | None = None  # when `step` was reached (heartbeat time)
    reported_step: int | None = None
    attempt: int | None = None  # the heartbeat's attempt (a run that restarts its steps)

    def __post_init__(self) -> None:
        self.step_times = deque(self.step_times, maxlen=self.keep_steps)

    def observe(self, heartbeat: dict[str, Any] | None, now: float,
                current_attempt: int | None = None) -> list[Finding]:
        """`current_attempt`: the run's newest attempt (its batch script's record). A
        heartbeat from an older one says nothing about this one, which is starting up:
        the start-up limit holds until its first step."""
        beat_attempt = _number(heartbeat.get("attempt")) if heartbeat is not None else None
        if current_attempt is not None and beat_attempt is not None and beat_attempt < current_attempt:
            heartbeat = None
            if self.attempt != current_attempt:
                self.step = self.advanced_at = self.reported_step = None
                self.attempt, self.watching_since = current_attempt, now
        if heartbeat is not None:
            self._take(heartbeat, now)
        if self.step is None and self.watching_since is not None and self.reported_step is None:
            limit = self.startup_s if self.startup_s is not None else self.startup_factor * self.floor_s
            if now - self.watching_since > limit:
                self.reported_step = -1
                return [Finding(node=self.node, signal="step_stall", code="", device="",
                                message=f"no step in {now - self.watching_since:.0f}s since the run "
                                        f"started (start-up limit {limit:.0f}s)",
                                evidence="", time=now, source="progress", job_id=self.job_id,
                                attempt=self.attempt)]
            return []
        if self.step is None or self.advanced_at is None or self.reported_step == self.step:
            return []
        waited = now - self.advanced_at
        limit = stall_limit(list(self.step_times), self.k, self.floor_s)
        settling = self.steps_seen < self.settle_steps and self.settle_factor * self.floor_s > limit
        if settling:
            limit = self.settle_factor * self.floor_s
        if waited <= limit:
            return []
        self.reported_step = self.step
        median = statistics.median(self.step_times) if self.step_times else None
        basis = (f"{self.settle_factor:g} x floor {self.floor_s:g}s, the first steps of a start" if settling
                 else f"{self.k:g} x median step {median:.1f}s" if median is not None
                 and self.k * median > self.floor_s else f"floor {self.floor_s:g}s")
        return [Finding(node=self.node, signal="step_stall", code="", device="",
                        message=f"step {self.step} stalled {waited:.0f}s (limit {limit:.0f}s: {basis})",
                        evidence=json.dumps(heartbeat, default=str)[:EVIDENCE_CAP] if heartbeat else "",
                        time=now, source="progress", job_id=self.job_id, attempt=self.attempt)]

    def _take(self, heartbeat: dict[str, Any], now: float) -> None:
        step = _number(heartbeat.get("step"))
        if step is None:
            return
        step = int(step)
        attempt = _number(heartbeat.get("attempt"))
        beat_time = _number(heartbeat.get("time"))
        reached_at = beat_time if beat_time is not None else now
        if self.watching_since is not None and reached_at < self.watching_since:
            # Left by the run before a requeue: this run has not made its first step yet,
            # and start-up (imports, rendezvous, loading the checkpoint) is not a stall.
            return
        new_attempt = attempt is not None and self.attempt is not None and int(attempt) != self.attempt
        self.attempt = int(attempt) if attempt is not None else None
        # First beat, a restart from a checkpoint, or the first beat of a new attempt (its
        # first step can be the step the last attempt reached: the clock starts afresh).
        if self.step is None or step < self.step or new_attempt:
            self.step, self.advanced_at = step, reached_at
            self.reported_step = None
            self.steps_seen = 0
            return
        if step == self.step:
            return
        reported = _number(heartbeat.get("step_time"))
        if self.reported_step == self.step:
            pass  # the stalled step's time would hide the next stall: not a step time
        elif reported is not None and reported > 0:
            self.step_times.append(reported)
        elif self.advanced_at is not None and reached_at > self.advanced_at:
            self.step_times.append((reached_at - self.advanced_at) / (step - self.step))
        self.step, self.advanced_at = step, reached_at
        self.steps_seen += 1


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class ProgressWatcher:
    """The I/O edge: one detector per job, each reading its run directory's heartbeat."""

    def __init__(self, node: str, *, k: float = 5.0, floor_s: float = 300.0, settle_factor: float = 2.0,
                 startup_s: float | None = None,
                 read: Callable[[Path], dict[str, Any] | None] = read_heartbeat) -> None:
        self.node, self.k, self.floor_s, self._read = node, k, floor_s, read
        self.settle_factor, self.startup_s = settle_factor, startup_s
        self._runs: dict[str, tuple[Path, StallDetector]] = {}

    def watch(self, job_id: str, run_dir: Path | str, now: float) -> None:
        if str(job_id) not in self._runs:
            self._runs[str(job_id)] = (Path(run_dir), StallDetector(
                self.node, str(job_id), k=self.k, floor_s=self.floor_s, watching_since=now,
                settle_factor=self.settle_factor, startup_s=self.startup_s))

    def unwatch(self, job_id: str) -> None:
        self._runs.pop(str(job_id), None)

    def poll(self, now: float) -> list[Finding]:
        found: list[Finding] = []
        for run_dir, detector in self._runs.values():
            found.extend(detector.observe(self._read(run_dir), now, current_attempt(run_dir)))
        return found
