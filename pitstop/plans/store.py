"""Plan files: what a booked training plan is (its segments, their reservations, owner,
the attached run and each segment's job), kept one JSON file per plan under
`<state dir>/plans/`, each written atomically, so `plans watch`, the CLI and the TUI read
the same record and a restart of any of them loses nothing."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pitstop.fsutil import write_json_atomic

RESERVATION_PREFIX = "pitstop-"
OFFERINGS_FILE = "offerings.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_MAX_EVENTS = 200


class PlanError(Exception):
    """A plan that cannot be read, named or changed as asked; the message says why."""


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise PlanError(f"plan name {name!r}: use 1-40 lower-case letters, digits, '-' or '_' "
                        "(it becomes part of the reservation names pitstop-<plan>-s<k>)")
    return name


def reservation_name(plan: str, index: int) -> str:
    return f"{RESERVATION_PREFIX}{plan}-s{index}"


@dataclass
class PlanSegment:
    index: int  # 1-based, as in the reservation name
    start: float
    end: float
    nodes: int
    reservation: str
    job_id: str | None = None
    submitted_at: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class PlanRun:
    """The run attached to a plan: one pinned run directory carried across segments."""

    recipe: str
    overrides: list[str]
    run_dir: str
    chdir: str
    grace_s: float


@dataclass
class Plan:
    name: str
    owner: str
    users: list[str]
    partition: str | None
    created_at: float
    segments: list[PlanSegment]
    run: PlanRun | None = None
    cancelled_at: float | None = None
    failed: str = ""  # why the plan cannot go on, when it cannot
    events: list[dict[str, Any]] = field(default_factory=list)

    def segment(self, index: int) -> PlanSegment:
        return next(s for s in self.segments if s.index == index)

    def note(self, what: str, now: float | None = None) -> None:
        """Record what happened to the plan (kept short: the newest events)."""
        self.events.append({"time": time.time() if now is None else now, "what": what})
        del self.events[:-_MAX_EVENTS]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        data = dict(data)
        data["segments"] = [PlanSegment(**s) for s in data.get("segments", [])]
        data["run"] = PlanRun(**data["run"]) if data.get("run") else None
        return cls(**data)


class PlanStore:
    """The plans under one state directory."""

    def __init__(self, state_dir: Path | str):
        self.dir = Path(state_dir) / "plans"

    def path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}.json"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> Plan:
        path = self.path(name)
        try:
            return Plan.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise PlanError(f"no plan named {name!r} (no {path})") from None
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise PlanError(f"{path}: not a plan file ({exc})") from None

    def save(self, plan: Plan) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path(plan.name), plan.to_dict(), indent=2)

    def all(self) -> list[Plan]:
        if not self.dir.is_dir():
            return []
        return [self.load(p.stem) for p in sorted(self.dir.glob("*.json"))
                if p.name != OFFERINGS_FILE and _NAME.match(p.stem)]

    def save_offerings(self, offerings: list[dict[str, Any]]) -> None:
        """The last search's offerings, so `plans book o1` books what the search showed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / OFFERINGS_FILE, offerings, indent=2)

    def offering(self, offering_id: str) -> dict[str, Any]:
        path = self.dir / OFFERINGS_FILE
        try:
            offerings = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError("no offerings yet: run `pitstop plans search` first") from None
        for offer in offerings:
            if offer.get("id") == offering_id:
                return offer
        known = ", ".join(o.get("id", "?") for o in offerings) or "none"
        raise PlanError(f"no offering {offering_id!r} in the last search ({path}; it has {known})")
