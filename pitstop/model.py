"""The cluster model every component shares: nodes and jobs as Slurm reports them,
findings as the agent's sources report them, and a node's pitstop health.

These are plain data; they cross process boundaries as JSON (`to_dict` / `from_dict`),
so the agent, the hooks, the TUI and `pitstop status` can each be run alone.
"""

from __future__ import annotations

import functools

import enum
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class Health(str, enum.Enum):
    """A node's pitstop health, the states of the agent's per-node machine."""

    OK = "OK"
    SUSPECT = "SUSPECT"
    FENCED = "FENCED"
    REBOOTING = "REBOOTING"
    CHECKING = "CHECKING"
    UNKNOWN = "UNKNOWN"


# Slurm's node state flags that mean "this node takes no new work".
UNAVAILABLE_FLAGS = frozenset({"DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "DOWN",
                               "NOT_RESPONDING", "REBOOT_ISSUED", "REBOOT_REQUESTED",
                               "POWERED_DOWN", "MAINTENANCE"})

PITSTOP_REASON_PREFIX = "pitstop:"
# A node failed with this reason needs a person (or the cloud) to replace hardware: no
# check or agent returns it. The hooks' full check and the agent both write it.
REPLACE_REASON = f"{PITSTOP_REASON_PREFIX} Action:Replace"

# The policy's classes, least severe first; the last four fence the node. One list for
# the policy, the health state machine, the actions and every view that ranks findings.
ACTION_CLASSES = ("ignore", "watch", "app", "drain", "down", "reboot", "replace")
FENCE_CLASSES = ACTION_CLASSES[3:]
CLASS_SEVERITY = {name: rank for rank, name in enumerate(ACTION_CLASSES)}


@dataclass
class Node:
    """One Slurm node: its base state, its flags and why it is unavailable."""

    name: str
    state: str  # base state, upper case: IDLE, MIXED, ALLOCATED, DOWN, FUTURE, UNKNOWN...
    flags: list[str] = field(default_factory=list)  # DRAIN, NOT_RESPONDING, REBOOT_ISSUED...
    reason: str = ""
    reason_user: str = ""
    reason_time: float | None = None  # epoch seconds
    cpus: int = 0
    cpus_alloc: int = 0
    gres: str = ""
    gres_used: str = ""
    memory_mb: int = 0
    memory_alloc_mb: int = 0
    partitions: list[str] = field(default_factory=list)
    address: str = ""
    jobs: list[str] = field(default_factory=list)  # ids of the jobs running on it

    @property
    def drained(self) -> bool:
        return bool({"DRAIN", "DRAINED", "DRAINING"} & set(self.flags))

    @property
    def down(self) -> bool:
        return self.state == "DOWN" or "DOWN" in self.flags

    @property
    def unreachable(self) -> bool:
        """Down or not responding: no slurmd answers for it (its steps are never torn down)."""
        return self.down or "NOT_RESPONDING" in self.flags

    @property
    def failed(self) -> bool:
        return self.state == "FAIL" or bool({"FAIL", "FAILING"} & set(self.flags))

    @property
    def available(self) -> bool:
        """True when Slurm would place new work on this node."""
        return not (self.state in {"DOWN", "FUTURE", "UNKNOWN"} or UNAVAILABLE_FLAGS & set(self.flags))

    @property
    def fenced_by_pitstop(self) -> bool:
        """Only reasons that pitstop wrote are pitstop's to undo."""
        return self.reason.startswith(PITSTOP_REASON_PREFIX)

    @property
    def gpus(self) -> int:
        """Configured GPU count, from a GRES string such as `gpu:8` or `gpu:h100:8(S:0-1)`."""
        return gres_count(self.gres, "gpu")

    @property
    def gpus_used(self) -> int:
        return gres_count(self.gres_used, "gpu")

    @property
    def state_label(self) -> str:
        """`idle+drain` style, as `sinfo -O StateComplete` prints it."""
        return "+".join([self.state.lower(), *(f.lower() for f in self.flags)])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Node":
        return cls(**_known(cls, data))


@dataclass
class Job:
    """One Slurm job, from the queue or in detail."""

    job_id: str
    name: str = ""
    user: str = ""
    state: str = ""  # PENDING, RUNNING, COMPLETED, FAILED, REQUEUED...
    reason: str = ""
    nodes: list[str] = field(default_factory=list)
    num_nodes: int = 0
    partition: str = ""
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    time_limit: int | None = None  # seconds; None when unlimited
    restart_count: int = 0
    stdout: str = ""
    stderr: str = ""
    work_dir: str = ""
    requeue: bool = False
    batch_host: str = ""
    exit_code: str = ""
    reservation: str = ""
    tres_per_node: str = ""
    comment: str = ""

    @property
    def running(self) -> bool:
        return self.state in {"RUNNING", "COMPLETING"}

    @property
    def pending(self) -> bool:
        return self.state in {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING"}

    @property
    def finished(self) -> bool:
        return self.state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                              "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        return cls(**_known(cls, data))


@dataclass
class Reservation:
    name: str
    state: str = ""
    start_time: float | None = None
    end_time: float | None = None
    nodes: list[str] = field(default_factory=list)
    node_count: int = 0
    partition: str = ""
    flags: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Finding:
    """One observation from a source: what was seen, where, and the evidence.

    A finding decides nothing; the policy reads it and decides.
    """

    node: str
    signal: str  # xid, sxid, ecc_dbe, fallen_off_bus, nccl_timeout, step_stall...
    code: str = ""  # the XID number, the counter name, the pattern id
    device: str = ""  # gpu0, 0000:3b:00, nd0, mlx5_0, "" for the node
    message: str = ""
    evidence: str = ""  # the raw line or reading, capped
    time: float = field(default_factory=time.time)
    source: str = ""  # kmsg, nvml, neuron, host, joblogs, progress
    job_id: str = ""
    attempt: int | None = None  # the job's step start it was seen in (a run that restarts its steps)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes two findings the same fault, for deduplication."""
        return (self.node, self.signal, self.code, self.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(**_known(cls, data))


@dataclass
class ClusterSnapshot:
    """One whole-cluster read: every node and every job, taken together."""

    nodes: list[Node]
    jobs: list[Job]
    taken_at: float = field(default_factory=time.time)

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def jobs_on(self, node: str) -> list[Job]:
        return [j for j in self.jobs if node in j.nodes and j.running]


def gres_count(gres: str, kind: str) -> int:
    """The count of `kind` in a GRES string: `gpu:8`, `gpu:h100:4(S:0),gpu:a100:2`."""
    total = 0
    for item in _split_top(gres):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gres" and len(parts) > 1:
            parts = parts[1:]
        if parts[0] != kind:
            continue
        try:
            total += int(parts[-1])
        except ValueError:
            total += 1 if len(parts) == 1 else 0
    return total


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    out, depth, cur = [], 0, []
    for ch in text or "":
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return [s for s in out if s and s not in {"(null)", "N/A"}]


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = _field_names(cls)
    return {k: v for k, v in data.items() if k in names}


@functools.lru_cache(maxsize=None)
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))
