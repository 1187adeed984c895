"""One cluster health table: Slurm's view of each node joined with its agent's state file.

The agents write `<state_dir>/<node>.json` (the shape is documented in
pitstop/daemon/health.py); on a real cluster the state directory is a shared path, on
the testbed each agent has its own sub-directory. This module reads them as plain JSON,
so `pitstop status` and the TUI never import the agent.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pitstop.model import CLASS_SEVERITY, ClusterSnapshot, Health, Node

# Class severity, for picking a node's worst open finding.
SEVERITY = CLASS_SEVERITY
STALE_AFTER_S = 120.0


@dataclass
class NodeHealth:
    """One row of the cluster health table."""

    node: str
    slurm_state: str
    health: str  # pitstop's: OK, SUSPECT, FENCED, REBOOTING, CHECKING, UNKNOWN (no agent)
    fence_class: str | None = None
    reason: str = ""
    reason_is_pitstop: bool = False
    accelerators_healthy: int | None = None
    accelerators_total: int = 0
    worst_finding: dict[str, Any] | None = None
    open_findings: int = 0
    agent_updated_at: float | None = None
    agent_stale: bool = True
    jobs: list[str] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# path -> ((inode, mtime_ns, size), parsed): a long-lived reader (the TUI's child process,
# the SSH far side) parses only the files that changed since its last refresh.
_PARSED: dict[Path, tuple[tuple[int, int, int], Any]] = {}


def _read_state_file(path: Path) -> Any:
    """The parsed file, from the cache while its inode, mtime and size are unchanged (the
    agent replaces the file atomically, so a new version has a new inode). Shared: do not
    mutate what it returns."""
    try:
        st = path.stat()
    except OSError:
        _PARSED.pop(path, None)
        return None
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _PARSED.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        _PARSED.pop(path, None)
        return None
    _PARSED[path] = (stamp, data)
    return data


def load_states(state_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Every node state file under `state_dir` (`<node>.json` or `<node>/<node>.json`);
    a file that cannot be read is skipped, not fatal: the view shows that node as UNKNOWN.
    The dicts returned are shared with the next call's (unchanged files are not parsed
    again): read them, do not change them."""
    root = Path(state_dir)
    states: dict[str, dict[str, Any]] = {}
    candidates = list(root.glob("*.json")) + list(root.glob("*/*.json"))
    for path in candidates:
        node = path.stem
        if path.parent != root and path.parent.name != node:
            continue
        data = _read_state_file(path)
        if data is None:
            continue
        if isinstance(data, dict) and data.get("node") == node:
            previous = states.get(node)
            if previous is None or data.get("updated_at", 0) >= previous.get("updated_at", 0):
                states[node] = data
    return states


def worst_finding(findings: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not findings:
        return None
    return max(findings, key=lambda f: (SEVERITY.get(f.get("action_class", ""), 0),
                                        f.get("last_seen", f.get("time", 0))))


def node_health(node: Node, state: dict[str, Any] | None, now: float) -> NodeHealth:
    row = NodeHealth(node=node.name, slurm_state=node.state_label, health=Health.UNKNOWN.value,
                     reason=node.reason, reason_is_pitstop=node.fenced_by_pitstop,
                     accelerators_total=node.gpus, jobs=list(node.jobs))
    if state is None:
        return row
    updated = state.get("updated_at")
    findings = [f for f in state.get("open_findings", []) if isinstance(f, dict)]
    telemetry = state.get("telemetry") if isinstance(state.get("telemetry"), dict) else {}
    row.health = str(state.get("health", Health.UNKNOWN.value))
    row.fence_class = state.get("fence_class")
    row.worst_finding = worst_finding(findings)
    row.open_findings = len(findings)
    row.agent_updated_at = float(updated) if isinstance(updated, (int, float)) else None
    heartbeat = telemetry.get("heartbeat_at", row.agent_updated_at)
    row.agent_stale = not isinstance(heartbeat, (int, float)) or now - heartbeat > STALE_AFTER_S
    if isinstance(telemetry.get("accelerators_total"), int) and telemetry["accelerators_total"]:
        row.accelerators_total = telemetry["accelerators_total"]
    if isinstance(telemetry.get("accelerators_healthy"), int):
        row.accelerators_healthy = telemetry["accelerators_healthy"]
    row.actions = [a for a in state.get("actions", [])[-5:] if isinstance(a, dict)]
    return row


def cluster_health(snapshot: ClusterSnapshot, states: dict[str, dict[str, Any]],
                   now: float | None = None) -> list[NodeHealth]:
    now = time.time() if now is None else now
    return [node_health(node, states.get(node.name), now) for node in snapshot.nodes]


def events(state_dir: Path | str, limit: int = 200) -> list[dict[str, Any]]:
    """The newest findings and actions across every node's event log, newest first."""
    root = Path(state_dir)
    rows: list[dict[str, Any]] = []
    for path in list(root.glob("*.events.jsonl")) + list(root.glob("*/*.events.jsonl")):
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 256 * 1024))
                tail = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        for line in tail[-limit:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("kind") in {"finding", "decision", "action",
                                                                    "transition", "warning"}:
                rows.append(record)
    rows.sort(key=lambda r: r.get("time", 0), reverse=True)
    return rows[:limit]
