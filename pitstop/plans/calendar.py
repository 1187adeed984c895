"""The cluster's calendar and the offerings a training plan can book (issue #8, search).

Pure functions over a snapshot: running jobs hold their nodes until their expected end
(start + time limit, as Slurm judges it, and the second after), reservations block their nodes for their span,
and down, drained or failed nodes do not count. From that, `search` finds the earliest
single window with enough nodes for the whole duration, and the earliest combination of
at most K segments that adds up to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

from pitstop.model import ClusterSnapshot, Reservation

INFINITE = float("inf")
# Slurm counts a job's nodes busy through the second its time limit ends: a reservation
# that starts at exactly that second is refused ("Requested nodes are busy").
JOB_END_SLACK = 1.0


@dataclass(frozen=True)
class Busy:
    """A node unavailable from `start` to `end` (a job's expected end, a reservation)."""

    node: str
    start: float
    end: float
    why: str


@dataclass
class Calendar:
    nodes: list[str]  # nodes that can take work (up, not drained, in the partition)
    busy: list[Busy] = field(default_factory=list)
    now: float = 0.0

    def free_nodes(self, at: float) -> list[str]:
        blocked = {b.node for b in self.busy if b.start <= at < b.end}
        return [n for n in self.nodes if n not in blocked]

    def change_points(self, after: float, before: float) -> list[float]:
        """The moments the free-node count can change, within [after, before)."""
        points = {after}
        for b in self.busy:
            for t in (b.start, b.end):
                if after <= t < before:
                    points.add(t)
        return sorted(points)

    def free_intervals(self, count: int, after: float, before: float) -> list[tuple[float, float]]:
        """Maximal intervals inside [after, before) with at least `count` nodes free."""
        points = self.change_points(after, before) + [before]
        intervals: list[tuple[float, float]] = []
        for start, end in zip(points, points[1:]):
            if end <= start or len(self.free_nodes(start)) < count:
                continue
            if intervals and intervals[-1][1] == start:
                intervals[-1] = (intervals[-1][0], end)
            else:
                intervals.append((start, end))
        return intervals


@dataclass
class Segment:
    start: float
    end: float
    nodes: int

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Offering:
    segments: list[Segment]

    @property
    def start(self) -> float:
        return self.segments[0].start

    @property
    def end(self) -> float:
        return self.segments[-1].end

    @property
    def span(self) -> float:
        return self.end - self.start

    @property
    def gaps(self) -> list[float]:
        return [b.start - a.end for a, b in zip(self.segments, self.segments[1:])]

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "span_s": self.span, "gaps_s": self.gaps,
                "segments": [asdict(s) for s in self.segments]}


def calendar_from(snapshot: ClusterSnapshot, reservations: Iterable[Reservation], now: float,
                  partition: str | None = None) -> Calendar:
    usable = [n.name for n in snapshot.nodes
              if not (n.drained or n.down or n.failed or n.state in {"FUTURE", "UNKNOWN"})
              and (partition is None or partition in n.partitions)]
    busy: list[Busy] = []
    for job in snapshot.jobs:
        if not job.running:
            continue
        if job.end_time:
            end = job.end_time
        elif job.start_time and job.time_limit:
            end = job.start_time + job.time_limit
        else:
            end = INFINITE
        busy += [Busy(node, now, max(end + JOB_END_SLACK, now), f"job {job.job_id}") for node in job.nodes]
    for resv in reservations:
        start, end = resv.start_time or now, resv.end_time or INFINITE
        if end <= now:
            continue
        busy += [Busy(node, start, end, f"reservation {resv.name}") for node in resv.nodes]
    return Calendar(nodes=usable, busy=busy, now=now)


def earliest_window(calendar: Calendar, nodes: int, duration: float, after: float,
                    before: float = INFINITE) -> Offering | None:
    """The earliest single window of `duration` with `nodes` free throughout."""
    for start, end in calendar.free_intervals(nodes, after, _horizon(calendar, after, before, duration)):
        if end - start >= duration and start + duration <= before:
            return Offering([Segment(start, start + duration, nodes)])
    return None


def earliest_split(calendar: Calendar, nodes: int, duration: float, after: float,
                   before: float = INFINITE, max_segments: int = 2, min_segment: float = 60.0,
                   max_segment: float = INFINITE) -> Offering | None:
    """The earliest-finishing set of at most `max_segments` segments adding up to
    `duration`; each at least `min_segment` long (except that none is needed shorter)."""
    if max_segments < 2:
        return None
    remaining, segments = duration, []
    for start, end in calendar.free_intervals(nodes, after, _horizon(calendar, after, before, duration)):
        cursor = start
        while end - cursor >= min(min_segment, remaining) and remaining > 0 and len(segments) < max_segments:
            length = min(end - cursor, remaining, max_segment)
            if cursor + length > before:
                break
            segments.append(Segment(cursor, cursor + length, nodes))
            remaining -= length
            cursor += length
        if remaining <= 1e-9:
            return Offering(segments) if len(segments) > 1 else None
        if len(segments) >= max_segments:
            break
    return None


def search(calendar: Calendar, nodes: int, duration: float, after: float, before: float = INFINITE,
           max_segments: int = 1, min_segment: float = 60.0, max_segment: float = INFINITE) -> list[Offering]:
    """Offerings ranked best first: the earliest end, then the fewest segments."""
    found = []
    single = earliest_window(calendar, nodes, duration, after, before)
    if single is not None:
        found.append(single)
    split = earliest_split(calendar, nodes, duration, after, before, max_segments, min_segment, max_segment)
    if split is not None and (single is None or split.end < single.end):
        found.append(split)
    return sorted(found, key=lambda o: (o.end, len(o.segments)))


def _horizon(calendar: Calendar, after: float, before: float, duration: float) -> float:
    """How far to look: past the last known change plus the duration, or `before`."""
    last = max([after] + [t for b in calendar.busy for t in (b.start, b.end) if t != INFINITE])
    return min(before, last + duration + 1)
