"""Booking: one Slurm reservation per segment, all or nothing.

Slurm has no dry run for a reservation (creating it is the test: it refuses nodes it
expects to be busy), so a booking creates the segments in order and, when one fails,
deletes the ones it made before saying why. Reservations are booked by node count with
REPLACE_DOWN and never MAINT, so Slurm swaps a node that goes down or drained for an
idle spare. Times are sent to the second as the controller's local time (`Duration=`
would round up to whole minutes).
"""

from __future__ import annotations

import getpass
import time
from typing import Any

from pitstop.plans.store import Plan, PlanError, PlanSegment, PlanStore, check_name, reservation_name
from pitstop.slurm import Slurm, SlurmError
from pitstop.slurm.parse import format_time

BOOKING_FLAGS = ("REPLACE_DOWN",)


class BookingError(PlanError):
    """A segment could not be reserved; what was made before it has been deleted."""


def segments_of(plan_name: str, offering: dict[str, Any]) -> list[PlanSegment]:
    """The plan's segments, to the whole second (what Slurm keeps)."""
    return [PlanSegment(index=k, start=float(int(s["start"])), end=float(int(s["end"])), nodes=int(s["nodes"]),
                        reservation=reservation_name(plan_name, k))
            for k, s in enumerate(offering["segments"], start=1)]


def reserve(slurm: Slurm, segment: PlanSegment, users: list[str], partition: str | None,
            now: float) -> None:
    """Create one segment's reservation (from now if its start has passed) and check that
    Slurm gave it every node asked for; a short one is deleted again."""
    if segment.end <= now:
        raise BookingError(f"segment {segment.index} ended at {format_time(segment.end)}: nothing to reserve")
    start = "now" if segment.start <= now + 1 else format_time(segment.start)
    slurm.create_reservation(segment.reservation, start=start, end=format_time(segment.end),
                             node_count=segment.nodes, users=users, partition=partition,
                             flags=BOOKING_FLAGS)
    made = slurm.reservation(segment.reservation)
    if made is None or made.node_count != segment.nodes:
        got = made.node_count if made else 0
        _delete_quietly(slurm, segment.reservation)
        raise BookingError(f"{segment.reservation}: Slurm reserved {got} of {segment.nodes} nodes")


def book(slurm: Slurm, store: PlanStore, name: str, offering: dict[str, Any],
         users: list[str] | None = None, partition: str | None = None,
         now: float | None = None) -> Plan:
    """Reserve every segment of `offering` as plan `name`, or none of them."""
    check_name(name)
    if store.exists(name):
        raise PlanError(f"a plan named {name!r} exists already ({store.path(name)})")
    owner = getpass.getuser()
    users = users or [owner]
    segments = segments_of(name, offering)
    taken = {r.name for r in slurm.reservations()}
    clash = [s.reservation for s in segments if s.reservation in taken]
    if clash:
        raise BookingError(f"reservation {clash[0]} exists already; delete it or choose another name")
    made: list[PlanSegment] = []
    for segment in segments:
        try:
            reserve(slurm, segment, users, partition, time.time() if now is None else now)
        except (SlurmError, BookingError) as exc:
            undone = [s.reservation for s in made if _delete_quietly(slurm, s.reservation)]
            left = [s.reservation for s in made if s.reservation not in undone]
            detail = f"; deleted again: {', '.join(undone)}" if undone else ""
            if left:
                detail += f"; COULD NOT DELETE: {', '.join(left)}"
            raise BookingError(f"segment {segment.index} of {len(segments)} "
                               f"({format_time(segment.start)} to {format_time(segment.end)}, "
                               f"{segment.nodes} nodes) not reserved: {_why(exc)}{detail}") from None
        made.append(segment)
    plan = Plan(name=name, owner=owner, users=list(users), partition=partition,
                created_at=time.time(), segments=segments)
    plan.note(f"booked {len(segments)} segment(s): {', '.join(s.reservation for s in segments)}")
    store.save(plan)
    return plan


def _why(exc: Exception) -> str:
    return exc.stderr if isinstance(exc, SlurmError) and exc.stderr else str(exc)


def _delete_quietly(slurm: Slurm, name: str) -> bool:
    try:
        slurm.delete_reservation(name)
        return True
    except SlurmError:
        return False
