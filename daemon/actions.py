"""Carrying out the policy's decisions on one node, through pitstop.slurm only.

Fencing is claim-then-verify, so that agents on many nodes keep the blast-radius limit
without talking to each other: an agent drains its node (the claim), then counts the
nodes that carry a recent `pitstop:` reason in Slurm — the one view every agent shares —
and ranks them by when their reason was set (then by name). Only the first
`floor(max_share × nodes)` keep their fence; a node ranked past that resumes itself,
the breaker reports that it tripped, and nothing more is fenced until a person looks.
Jobs are requeued only after the fence holds.

Only reasons that start with `pitstop:` are pitstop's: a node an operator drained is
never resumed, never counted, and never re-fenced over the operator's reason.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from pitstop.model import PITSTOP_REASON_PREFIX, Node
from pitstop.slurm import Slurm, SlurmError

log = logging.getLogger(__name__)

FENCE_CLASSES = ("drain", "reboot", "replace")


@dataclass
class Outcome:
    """One thing pitstop did (or, in dry-run, would have done)."""

    action: str  # drain | fail | reboot | requeue | resume | replace_command | breaker | unfence | return_check
    ok: bool = True
    detail: str = ""
    job_id: str = ""
    dry_run: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BreakerView:
    """The cluster's pitstop fences inside the window, as Slurm shows them to everyone."""

    total_nodes: int
    fenced: list[str] = field(default_factory=list)  # ranked: oldest fence first
    allowed: int = 0

    @property
    def open(self) -> bool:
        return len(self.fenced) > self.allowed or self.total_nodes <= 0

    def rank(self, node: str) -> int | None:
        return self.fenced.index(node) if node in self.fenced else None

    def to_dict(self) -> dict:
        return {"total_nodes": self.total_nodes, "fenced": self.fenced, "allowed": self.allowed,
                "open": self.open}


def breaker_view(nodes: Sequence[Node], max_share: float, window_s: float, now: float) -> BreakerView:
    """Pure: which nodes count against the blast-radius limit, in fence order."""
    recent = [n for n in nodes if n.fenced_by_pitstop and (n.drained or n.failed or n.down)
              and (n.reason_time is None or n.reason_time >= now - window_s)]
    recent.sort(key=lambda n: (n.reason_time or 0.0, n.name))
    return BreakerView(total_nodes=len(nodes), fenced=[n.name for n in recent],
                       allowed=math.floor(max_share * len(nodes) + 1e-9))


class NodeActions:
    """What the agent on `node` may do to Slurm."""

    def __init__(self, slurm: Slurm, node: str, *, dry_run: bool = False,
                 max_fenced_share: float = 0.5, breaker_window_s: float = 3600.0,
                 settle_s: float = 1.5, replace_command: Sequence[str] = (),
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.slurm = slurm
        self.node = node
        self.dry_run = dry_run
        self.max_fenced_share = max_fenced_share
        self.breaker_window_s = breaker_window_s
        self.settle_s = settle_s
        self.replace_command = list(replace_command)
        self.clock = clock
        self.sleep = sleep
        self.breaker_tripped = False
        self.last_breaker: BreakerView | None = None

    # --- reading ----------------------------------------------------------------------

    def breaker(self) -> BreakerView:
        view = breaker_view(self.slurm.nodes(), self.max_fenced_share, self.breaker_window_s, self.clock())
        self.last_breaker = view
        return view

    def this_node(self) -> Node | None:
        return self.slurm.node(self.node)

    # --- fencing ----------------------------------------------------------------------

    def fence(self, action_class: str, reason: str, requeue_jobs: bool = True) -> list[Outcome]:
        """Drain, reboot or replace this node, within the blast-radius limit."""
        if action_class not in FENCE_CLASSES:
            raise ValueError(f"not a fence class: {action_class!r}")
        if not reason.startswith(PITSTOP_REASON_PREFIX):
            raise ValueError("pitstop's reasons start with 'pitstop:'")
        state = "fail" if action_class == "replace" else "drain"
        current = self.this_node()
        if current is not None and current.reason and not current.fenced_by_pitstop and \
                (current.drained or current.failed or current.down):
            return [Outcome(state, ok=False, reason=reason,
                            detail=f"left alone: an operator's reason is on it ({current.reason!r})")]
        if self.dry_run:
            return self._dry_fence(action_class, state, reason)
        before = self.breaker()
        others = [n for n in before.fenced if n != self.node]
        if len(others) >= before.allowed and self.node not in before.fenced:
            return [self._trip(before, reason, "not fenced")]
        outcomes = [self._node_update(state, reason)]
        if not outcomes[0].ok:
            return outcomes
        self.sleep(self.settle_s)
        after = self.breaker()
        rank = after.rank(self.node)
        if rank is not None and rank >= after.allowed:
            self.slurm.resume(self.node)
            outcomes.append(Outcome("unfence", reason=reason,
                                    detail=f"ranked {rank + 1} of {len(after.fenced)} fences, "
                                           f"{after.allowed} allowed: fence taken back"))
            outcomes.append(self._trip(after, reason, "fence taken back"))
            return outcomes
        if requeue_jobs:
            outcomes += self.requeue_jobs_on_node()
        if action_class == "reboot":
            # Let the requeued jobs leave the node first. A job still completing here when
            # the node comes back from its reboot becomes pending at that very registration,
            # and Slurm 22.05 can hand it this node again before the agent's drain lands
            # (seen on the testbed: the node MIXED with the reboot's reason on it).
            self._wait_jobs_gone(self.JOBS_GONE_S)
            # nextstate=down: back from the reboot the node stays out until the agent's
            # return check passes (with ReturnToService=1; under 2 the agent drains it).
            outcomes.append(self._call("reboot", lambda: self.slurm.reboot(self.node, reason, nextstate="down"),
                                       reason))
        if action_class == "replace" and self.replace_command:
            outcomes.append(self._replace_command(reason))
        return outcomes

    def _dry_fence(self, action_class: str, state: str, reason: str) -> list[Outcome]:
        view = self.breaker()
        others = [n for n in view.fenced if n != self.node]
        if len(others) >= view.allowed:
            return [Outcome("breaker", ok=False, dry_run=True, reason=reason,
                            detail=f"would not fence: breaker open ({len(others)} of {view.total_nodes} fenced)")]
        planned = [Outcome(state, dry_run=True, reason=reason, detail=f"would {state} {self.node}")]
        for job in self._requeueable_jobs():
            planned.append(Outcome("requeue", dry_run=True, job_id=job, detail=f"would requeue job {job}"))
        if action_class == "reboot":
            planned.append(Outcome("reboot", dry_run=True, reason=reason, detail=f"would reboot {self.node}"))
        if action_class == "replace" and self.replace_command:
            planned.append(Outcome("replace_command", dry_run=True,
                                   detail=f"would run {self.replace_command + [self.node]}"))
        return planned

    def _trip(self, view: BreakerView, reason: str, what: str) -> Outcome:
        self.breaker_tripped = True
        detail = (f"blast-radius breaker open: {len(view.fenced)} of {view.total_nodes} nodes carry "
                  f"pitstop fences inside {self.breaker_window_s:.0f}s, at most {view.allowed} allowed; "
                  f"{what}; waiting for a person")
        log.error("%s (%s)", detail, reason)
        return Outcome("breaker", ok=False, reason=reason, detail=detail)

    def _node_update(self, state: str, reason: str) -> Outcome:
        update = self.slurm.fail if state == "fail" else self.slurm.drain
        return self._call(state, lambda: update(self.node, reason), reason)

    def _call(self, action: str, call: Callable[[], None], reason: str = "", job_id: str = "") -> Outcome:
        try:
            call()
        except SlurmError as exc:
            log.error("%s failed: %s", action, exc)
            return Outcome(action, ok=False, reason=reason, job_id=job_id, detail=str(exc))
        return Outcome(action, reason=reason, job_id=job_id)

    def _replace_command(self, reason: str) -> Outcome:
        args = self.replace_command + [self.node]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Outcome("replace_command", ok=False, reason=reason, detail=str(exc))
        return Outcome("replace_command", ok=proc.returncode == 0, reason=reason,
                       detail=f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}")

    # --- jobs -------------------------------------------------------------------------

    def _requeueable_jobs(self, job_ids: Sequence[str] | None = None) -> list[str]:
        jobs = self.slurm.jobs(states="RUNNING,COMPLETING,CONFIGURING")
        found = []
        for job in jobs:
            if job_ids is not None and job.job_id not in job_ids:
                continue
            if job_ids is None and self.node not in job.nodes:
                continue
            if job.requeue and (job.running or job.state == "CONFIGURING"):
                found.append(job.job_id)
        return found

    def requeue_jobs_on_node(self) -> list[Outcome]:
        return [self.requeue(job_id) for job_id in self._requeueable_jobs()]

    def requeue(self, job_id: str) -> Outcome:
        """Requeue one job so it resumes from its checkpoint; the node stays in service."""
        if self.dry_run:
            return Outcome("requeue", dry_run=True, job_id=job_id, detail=f"would requeue job {job_id}")
        if not self._requeueable_jobs([job_id]):
            return Outcome("requeue", ok=False, job_id=job_id,
                           detail="not requeued: not running, or submitted with --no-requeue")
        return self._call("requeue", lambda: self.slurm.requeue(job_id), job_id=job_id)

    # --- return to service --------------------------------------------------------------

    JOBS_GONE_S = 15.0

    def _wait_jobs_gone(self, timeout: float) -> bool:
        """Poll until no job is on this node (running or completing), at most `timeout`."""
        deadline = self.clock() + timeout
        while True:
            node = self.this_node()
            if node is None or (not node.jobs and "COMPLETING" not in node.flags
                                and node.state not in {"ALLOCATED", "MIXED", "COMPLETING"}):
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(0.2)

    def hold_for_check(self, reason: str) -> Outcome:
        """Drain a node Slurm returned to service before its return check ran."""
        why = reason.removeprefix(PITSTOP_REASON_PREFIX).strip() or "rebooted"
        return self._node_update("drain", f"{PITSTOP_REASON_PREFIX} awaiting full check after reboot: {why}")

    def resume_if_ours(self) -> Outcome | None:
        """Resume this node only when the reason on it is pitstop's; None when nothing to do."""
        node = self.this_node()
        if node is None or not (node.drained or node.failed or node.down):
            return None
        if {"REBOOT_ISSUED", "REBOOT_REQUESTED"} & set(node.flags):
            return None  # Slurm is still rebooting it; nextstate=resume will bring it back
        if not node.fenced_by_pitstop:
            return Outcome("resume", ok=False, detail=f"left alone: not pitstop's reason ({node.reason!r})")
        if self.dry_run:
            return Outcome("resume", dry_run=True, detail=f"would resume {self.node}")
        return self._call("resume", lambda: self.slurm.resume(self.node), reason=node.reason)
