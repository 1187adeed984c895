"""From the live cluster to ranked offerings: one snapshot and one reservation list read
through `pitstop.slurm`, the pure calendar search over them, and ids (`o1`, `o2`…) that
`plans book` refers to."""

from __future__ import annotations

import time
from typing import Any

from pitstop.plans.calendar import INFINITE, calendar_from, search
from pitstop.slurm import Slurm


def find_offerings(slurm: Slurm, nodes: int, duration: float, after: float | None = None,
                   before: float | None = None, partition: str | None = None, max_segments: int = 1,
                   min_segment: float = 60.0, max_segment: float = INFINITE,
                   now: float | None = None) -> list[dict[str, Any]]:
    """Offerings ranked best first, each a dict with its id, segments, span and gaps."""
    if nodes < 1:
        raise ValueError("--nodes must be at least 1")
    if max_segments < 1:
        raise ValueError("--max-segments must be at least 1")
    now = time.time() if now is None else now
    snapshot = slurm.snapshot()
    calendar = calendar_from(snapshot, slurm.reservations(), now, partition=partition)
    if nodes > len(calendar.nodes):
        raise ValueError(f"--nodes {nodes}: the cluster has {len(calendar.nodes)} usable node(s)"
                         + (f" in partition {partition}" if partition else ""))
    found = search(calendar, nodes, duration, after=max(now, after or now),
                   before=INFINITE if before is None else before, max_segments=max_segments,
                   min_segment=min_segment, max_segment=max_segment)
    return [{"id": f"o{k}", "partition": partition, **offer.to_dict()}
            for k, offer in enumerate(found, start=1)]
