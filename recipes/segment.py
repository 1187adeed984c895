"""The end of a training plan's segment, as the training runtime sees it.

A job that runs inside one segment of a plan (`pitstop plans attach`) has
`PITSTOP_SEGMENT_END` (epoch seconds) and `PITSTOP_SEGMENT_GRACE` (seconds) in its
environment. Slurm ends every job in a reservation when the reservation ends, so the run
stops by itself at the grace point (the end minus the grace): the ranks agree, save a
checkpoint and exit 0, the batch script does not requeue, and the next segment's job
resumes from that checkpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Mapping

SEGMENT_END_ENV = "PITSTOP_SEGMENT_END"
SEGMENT_GRACE_ENV = "PITSTOP_SEGMENT_GRACE"
DEFAULT_GRACE_S = 60.0


@dataclass(frozen=True)
class SegmentEnd:
    end: float
    grace: float = DEFAULT_GRACE_S

    @property
    def stop_at(self) -> float:
        return self.end - self.grace

    def reached(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.stop_at

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SegmentEnd | None":
        """The segment this job runs in, or None outside a plan; a malformed value is an error
        that names the variable."""
        environ = os.environ if environ is None else environ
        raw_end = environ.get(SEGMENT_END_ENV, "").strip()
        if not raw_end:
            return None
        raw_grace = environ.get(SEGMENT_GRACE_ENV, "").strip() or str(DEFAULT_GRACE_S)
        try:
            end, grace = float(raw_end), float(raw_grace)
        except ValueError:
            raise ValueError(f"{SEGMENT_END_ENV}={raw_end!r} / {SEGMENT_GRACE_ENV}={raw_grace!r}: "
                             "expected epoch seconds and seconds") from None
        if grace < 0:
            raise ValueError(f"{SEGMENT_GRACE_ENV}={raw_grace!r}: must not be negative")
        return cls(end, grace)


def stop_wanted(signal_name: str | None, segment: SegmentEnd | None, now: float | None = None) -> str | None:
    """Why this rank wants to stop at this step boundary: a signal, the segment's grace
    point, or None to go on."""
    if signal_name is not None:
        return signal_name
    if segment is not None and segment.reached(now):
        return f"the segment's grace point ({segment.grace:g}s before its end)"
    return None
