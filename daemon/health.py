"""A node's pitstop health: the state machine, kept in a file others read.

The agent's decisions have to outlive the agent (a reboot restarts it) and be visible
off the node: the TUI and `pitstop status` read this file, never the agent. One JSON
file per node, written atomically (`pitstop.fsutil`), and an event log beside it.

States (`pitstop.model.Health`) and the moves allowed between them:

    OK ──watch──▶ SUSPECT ──quiet──▶ OK
    OK / SUSPECT / CHECKING ──fence──▶ FENCED(drain | down | reboot | replace)
    FENCED(c) ──more severe fence──▶ FENCED(c')      (drain → down → reboot → replace)
    FENCED(drain | reboot) ──▶ REBOOTING ──new boot──▶ CHECKING ──pass──▶ OK
    FENCED(drain) ──▶ CHECKING                       (a deep check instead of a reboot)
    REBOOTING / CHECKING ──fail──▶ FENCED
    FENCED ──fence not applied──▶ SUSPECT           (the breaker was open, Slurm refused)
    FENCED(replace) stays until a person acts (`by_operator=True`); so does any move
    from FENCED straight to OK (an operator resumed the node).

`<state_dir>/<node>.json`, the shape the TUI and `pitstop status` read:

    {
      "version": 1,
      "node": "node1",
      "health": "FENCED",               # OK | SUSPECT | FENCED | REBOOTING | CHECKING
      "fence_class": "reboot",          # drain | down | reboot | replace while fenced, else null
      "reason": "pitstop: xid 79 gpu2 GPU has fallen off the bus",
      "since": 1764578000.0,            # when `health` last changed (epoch seconds)
      "updated_at": 1764578012.5,       # last write
      "boot_id": "5f0c…",               # the boot the agent last saw
      "open_findings": [                # newest last, at most `max_findings`
        {"node", "signal", "code", "device", "message", "evidence", "time", "source",
         "job_id",                      # the Finding's fields (pitstop.model.Finding)
         "action_class": "reboot",      # the policy's class for it
         "count": 3, "first_seen": …, "last_seen": …}
      ],
      "actions": [                      # newest last, at most `max_actions`
        {"time", "action": "drain", "reason", "job_id", "ok": true, "dry_run": false,
         "detail": ""}
      ],
      "counters": {"findings": 12, "decisions.watch": 4, …},   # monotonic, by name
      "history": {…},                   # the policy's memory (policy.History), opaque here
      "telemetry": {                    # what the agent publishes about itself, opaque here
        "heartbeat_at", "pid", "port", "dry_run", "breaker_open",
        "accelerators_total", "accelerators_healthy",
        "devices": [                    # one row a device (pitstop.daemon.devices)
          {"device": "gpu0", "kind": "gpu" | "neuron", "healthy": true,
           "finding": "<the worst open finding's message>" | null,
           "readings": {…}}             # GpuReading.to_dict(), a Neuron device's ECC
        ]}                              # counters, or {"path": "/dev/nvidia0"} (no driver)
    }

`<state_dir>/<node>.events.jsonl`: one JSON object a line, `{"time", "node", "kind",
…}` with kind finding ({"action_class", "finding": {…}}) | decision (policy.Decision's
to_dict) | transition ({"from_health", "to_health", "fence_class", "reason", …}) |
action (as in "actions") | boot | warning ({"message"}) | check (the return check:
{"stage": "started", "pid", "command"} then {"stage": "ended", "verdict": in-service |
replace | operator | retry, "returncode", "seconds", "detail"}); rotated to
`.events.jsonl.1` when it passes `events_max_bytes`.

A state file that cannot be read as this shape is moved aside to `<node>.json.corrupt`
with a logged warning, and the node starts clean: the agent never dies of its own file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitstop.fsutil import write_json_atomic
from pitstop.model import FENCE_CLASSES, Finding, Health

log = logging.getLogger(__name__)

STATE_VERSION = 1
_FENCE_RANK = {name: rank for rank, name in enumerate(FENCE_CLASSES)}
MAX_FINDINGS = 100
MAX_ACTIONS = 100
EVENTS_MAX_BYTES = 1024 * 1024
STATES = (Health.OK, Health.SUSPECT, Health.FENCED, Health.REBOOTING, Health.CHECKING)

# (from, to) -> the fence classes the move is allowed from (None: any), for the agent.
# Moves that only a person may make are in OPERATOR_MOVES.
TRANSITIONS: dict[tuple[Health, Health], frozenset[str] | None] = {
    (Health.OK, Health.SUSPECT): None,
    (Health.SUSPECT, Health.OK): None,
    (Health.OK, Health.FENCED): None,
    (Health.SUSPECT, Health.FENCED): None,
    (Health.CHECKING, Health.FENCED): None,
    (Health.FENCED, Health.FENCED): frozenset({"drain", "down", "reboot"}),  # only to a worse class
    (Health.FENCED, Health.REBOOTING): frozenset({"drain", "reboot"}),
    (Health.FENCED, Health.CHECKING): frozenset({"drain"}),
    (Health.REBOOTING, Health.CHECKING): None,
    (Health.REBOOTING, Health.FENCED): None,
    (Health.CHECKING, Health.OK): None,
    (Health.FENCED, Health.SUSPECT): None,  # the fence was not applied: nothing to wait for
}
OPERATOR_MOVES: frozenset[tuple[Health, Health]] = frozenset({
    (Health.FENCED, Health.OK), (Health.FENCED, Health.CHECKING), (Health.FENCED, Health.REBOOTING),
    (Health.REBOOTING, Health.OK), (Health.SUSPECT, Health.OK), (Health.CHECKING, Health.OK)})


class InvalidTransition(ValueError):
    """A move the state machine does not allow (the message says which and why)."""


class CorruptState(ValueError):
    """A state file that is not the documented shape."""


@dataclass
class NodeState:
    node: str
    health: Health = Health.OK
    fence_class: str | None = None
    reason: str = ""
    since: float = 0.0
    updated_at: float = 0.0
    boot_id: str = ""
    open_findings: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "node": self.node, "health": self.health.value,
                "fence_class": self.fence_class, "reason": self.reason, "since": self.since,
                "updated_at": self.updated_at, "boot_id": self.boot_id,
                "open_findings": self.open_findings, "actions": self.actions,
                "counters": self.counters, "history": self.history, "telemetry": self.telemetry}

    @classmethod
    def from_dict(cls, data: Any, node: str) -> "NodeState":
        """The state in `data`; CorruptState when it is not the documented shape."""
        if not isinstance(data, dict):
            raise CorruptState("not a JSON object")
        if data.get("version") != STATE_VERSION:
            raise CorruptState(f"version {data.get('version')!r}, expected {STATE_VERSION}")
        if data.get("node") != node:
            raise CorruptState(f"node {data.get('node')!r}, expected {node!r}")
        try:
            health = Health(data.get("health"))
        except ValueError:
            raise CorruptState(f"health {data.get('health')!r}") from None
        if health not in STATES:
            raise CorruptState(f"health {health.value!r}")
        fence_class = data.get("fence_class")
        if fence_class is not None and fence_class not in FENCE_CLASSES:
            raise CorruptState(f"fence_class {fence_class!r}")
        expected = {"reason": str, "boot_id": str, "open_findings": list, "actions": list,
                    "counters": dict, "history": dict}
        for key, kind in expected.items():
            if not isinstance(data.get(key), kind):
                raise CorruptState(f"{key} is not a {kind.__name__}")
        for key in ("since", "updated_at"):
            if isinstance(data.get(key), bool) or not isinstance(data.get(key), (int, float)):
                raise CorruptState(f"{key} is not a number")
        if not all(isinstance(item, dict) for item in data["open_findings"] + data["actions"]):
            raise CorruptState("open_findings and actions hold objects")
        telemetry = data.get("telemetry", {})
        if not isinstance(telemetry, dict):
            raise CorruptState("telemetry is not a dict")
        counters = {str(k): int(v) for k, v in data["counters"].items()
                    if isinstance(v, int) and not isinstance(v, bool)}
        return cls(node=node, health=health, fence_class=fence_class, reason=data["reason"],
                   since=float(data["since"]), updated_at=float(data["updated_at"]),
                   boot_id=data["boot_id"], open_findings=data["open_findings"],
                   actions=data["actions"], counters=counters, history=data["history"],
                   telemetry=telemetry)


class HealthStore:
    """One node's health state, its open findings and actions, persisted on `save()`."""

    def __init__(self, state_dir: Path | str, node: str, *, max_findings: int = MAX_FINDINGS,
                 max_actions: int = MAX_ACTIONS, events_max_bytes: int = EVENTS_MAX_BYTES,
                 state: NodeState | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.node = node
        self.max_findings = max_findings
        self.max_actions = max_actions
        self.events_max_bytes = events_max_bytes
        self.state = state or NodeState(node=node)

    @property
    def path(self) -> Path:
        return self.state_dir / f"{self.node}.json"

    @property
    def events_path(self) -> Path:
        return self.state_dir / f"{self.node}.events.jsonl"

    @classmethod
    def open(cls, state_dir: Path | str, node: str, **options: Any) -> "HealthStore":
        """The node's saved state, or a clean one (a corrupt file is moved aside)."""
        store = cls(state_dir, node, **options)
        store.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            raw = store.path.read_bytes()
        except FileNotFoundError:
            return store
        except OSError as err:
            log.warning("health state %s unreadable (%s): starting clean", store.path, err)
            store.bump("state_file_unreadable")
            return store
        try:
            store.state = NodeState.from_dict(json.loads(raw.decode("utf-8")), node)
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, CorruptState
            aside = store.path.with_name(store.path.name + ".corrupt")
            os.replace(store.path, aside)
            log.warning("health state %s unreadable (%s): moved to %s, starting clean",
                        store.path, err, aside)
            store.bump("state_file_corrupt")
            store.log_event("warning", store.state.updated_at,
                            message=f"state file unreadable ({err}); moved to {aside.name}")
        return store

    # ----------------------------------------------------------- the state machine

    @property
    def health(self) -> Health:
        return self.state.health

    def check_transition(self, to: Health, *, fence_class: str | None = None,
                         by_operator: bool = False) -> str:
        """"" when the move is allowed, else why not."""
        current, fenced_as = self.state.health, self.state.fence_class
        move = (current, to)
        if to == Health.FENCED and fence_class not in FENCE_CLASSES:
            return f"FENCED needs a fence class ({', '.join(FENCE_CLASSES)}), not {fence_class!r}"
        if by_operator and move in OPERATOR_MOVES:
            return ""
        if current == Health.FENCED and fenced_as == "replace" and to != Health.SUSPECT:
            return "FENCED(replace) waits for a person (by_operator)"
        if move not in TRANSITIONS:
            extra = " (only by an operator)" if move in OPERATOR_MOVES else ""
            return f"{current.value} -> {to.value} is not a move{extra}"
        allowed_from = TRANSITIONS[move]
        if allowed_from is not None and fenced_as not in allowed_from:
            return f"{current.value}({fenced_as}) -> {to.value} is not a move"
        if move == (Health.FENCED, Health.FENCED) and \
                _FENCE_RANK[fence_class] <= _FENCE_RANK[fenced_as]:
            return f"FENCED({fenced_as}) -> FENCED({fence_class}) is not worse"
        return ""

    def transition(self, to: Health, now: float, *, reason: str = "",
                   fence_class: str | None = None, by_operator: bool = False) -> None:
        """Move to `to`; InvalidTransition when the machine does not allow it."""
        why_not = self.check_transition(to, fence_class=fence_class, by_operator=by_operator)
        if why_not:
            raise InvalidTransition(why_not)
        before = self.state.health
        before_class = self.state.fence_class
        self.state.health = to
        if to == Health.FENCED:
            self.state.fence_class = fence_class
        elif to in (Health.OK, Health.SUSPECT):
            self.state.fence_class = None
        if reason or to == Health.OK:
            self.state.reason = reason
        self.state.since = now
        self.state.updated_at = now
        self.bump(f"transitions.{to.value}")
        self.log_event("transition", now, from_health=before.value, from_class=before_class,
                       to_health=to.value, fence_class=self.state.fence_class, reason=reason,
                       by_operator=by_operator)

    def on_boot(self, boot_id: str, now: float) -> bool:
        """The agent started on `boot_id`: a node that was rebooting is now checked.

        Returns True when the boot is new. REBOOTING (or FENCED(reboot), when the agent
        died before it wrote REBOOTING) moves to CHECKING.
        """
        if boot_id == self.state.boot_id:
            return False
        first = not self.state.boot_id
        self.state.boot_id = boot_id
        self.state.updated_at = now
        if first:
            return True
        rebooting = self.state.health == Health.REBOOTING or (
            self.state.health == Health.FENCED and self.state.fence_class == "reboot")
        if rebooting:
            if self.state.health == Health.FENCED:
                self.transition(Health.REBOOTING, now, reason=self.state.reason)
            self.transition(Health.CHECKING, now, reason=self.state.reason)
        self.log_event("boot", now, boot_id=boot_id)
        return True

    # ----------------------------------------------------------- findings and actions

    def note_finding(self, finding: Finding, action_class: str, now: float) -> None:
        """Keep `finding` open (merged with an open one of the same key)."""
        key = [finding.signal, finding.code, finding.device, finding.job_id]
        for item in self.state.open_findings:
            if [item.get("signal"), item.get("code"), item.get("device"), item.get("job_id")] == key:
                item["count"] = int(item.get("count", 1)) + 1
                item["last_seen"] = now
                item["action_class"] = action_class
                self.state.open_findings.remove(item)
                self.state.open_findings.append(item)
                break
        else:
            self.state.open_findings.append({**finding.to_dict(), "action_class": action_class,
                                             "count": 1, "first_seen": now, "last_seen": now})
        dropped = len(self.state.open_findings) - self.max_findings
        if dropped > 0:
            del self.state.open_findings[:dropped]
            self.bump("open_findings_dropped", dropped)
        self.bump("findings")
        self.state.updated_at = now
        self.log_event("finding", now, action_class=action_class, finding=finding.to_dict())

    def expire_findings(self, now: float, max_age_s: float) -> int:
        """Forget open findings not seen for `max_age_s`; a SUSPECT node with none left
        is OK again. Fenced states keep their findings (a person reads them)."""
        if self.state.health not in (Health.OK, Health.SUSPECT):
            return 0
        keep = [f for f in self.state.open_findings if now - float(f.get("last_seen", 0)) < max_age_s]
        expired = len(self.state.open_findings) - len(keep)
        self.state.open_findings = keep
        if self.state.health == Health.SUSPECT and not any(
                f.get("action_class") == "watch" for f in keep):
            self.transition(Health.OK, now, reason="")
        return expired

    def clear_findings(self, now: float) -> None:
        """A node back in service starts with no open findings."""
        self.state.open_findings = []
        self.state.updated_at = now

    def record_action(self, now: float, action: str, *, reason: str = "", job_id: str = "",
                      ok: bool = True, dry_run: bool = False, detail: str = "") -> None:
        """What the agent did (or, in dry run, would have done)."""
        entry = {"time": now, "action": action, "reason": reason, "job_id": job_id, "ok": ok,
                 "dry_run": dry_run, "detail": detail}
        self.state.actions.append(entry)
        dropped = len(self.state.actions) - self.max_actions
        if dropped > 0:
            del self.state.actions[:dropped]
        self.bump(f"actions.{action}{'.dry_run' if dry_run else ''}")
        self.state.updated_at = now
        self.log_event("action", now, **entry)

    def apply(self, decision: Any, now: float, *, dry_run: bool = False) -> bool:
        """Take a policy decision (`policy.Decision`) into the state; True when the
        health changed. The agent still acts on Slurm and calls `record_action`.

        Fences move to FENCED(class) when the machine allows it (a node already
        fenced worse, or rebooting, stays); watch moves OK to SUSPECT. In dry run the
        decision is recorded as an action that was not taken and the health stays.
        """
        klass = decision.action_class
        self.bump(f"decisions.{klass}")
        self.log_event("decision", now, **decision.to_dict())
        if klass == "ignore":
            return False
        for finding in decision.findings:
            self.note_finding(finding, klass, now)
        if dry_run:
            if decision.acts:
                self.record_action(now, klass, reason=decision.reason, job_id=decision.job_id,
                                   dry_run=True, detail=decision.detail)
            return False
        if decision.fences and not self.check_transition(Health.FENCED, fence_class=klass):
            self.transition(Health.FENCED, now, reason=decision.reason, fence_class=klass)
            return True
        if klass == "watch" and self.state.health == Health.OK:
            self.transition(Health.SUSPECT, now, reason=decision.reason)
            return True
        return False

    def bump(self, name: str, by: int = 1) -> None:
        self.state.counters[name] = self.state.counters.get(name, 0) + by

    # ----------------------------------------------------------- files

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.state.to_dict(), indent=2)

    def log_event(self, kind: str, now: float, **data: Any) -> None:
        line = json.dumps({"time": now, "node": self.node, "kind": kind, **data},
                          default=str) + "\n"
        raw = line.encode("utf-8")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            size = self.events_path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(raw) > self.events_max_bytes:
            os.replace(self.events_path, self.events_path.with_name(self.events_path.name + ".1"))
        with open(self.events_path, "ab") as fh:
            fh.write(raw)
