"""Carrying out the policy's decisions on one node, through pitstop.slurm only.

Fencing is claim-then-verify, so that agents on many nodes keep the blast-radius limit
without talking to each other: an agent drains its node (the claim), then counts the
nodes that carry a recent `pitstop:` reason in Slurm — the one view every agent shares —
and ranks them by when their reason was set (then by name). Only the first
`floor(max_share × nodes)` keep their fence; a node ranked past that resumes itself,
the breaker reports that it tripped, and nothing more is fenced until a person looks.
Jobs are restarted only after the fence holds: requeued, or, for a job that restarts in
its allocation (`pitstop.rundir`), its steps on the node ended so that its batch script
starts them again on the allocation's healthy nodes.

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

from pitstop.model import FENCE_CLASSES, PITSTOP_REASON_PREFIX, Job, Node
from pitstop.rundir import WARM_STEP_NAME
from pitstop.slurm import Slurm, SlurmError

log = logging.getLogger(__name__)

HOLD_PREFIX = "reboot-hold-"  # + node: the reservation that holds a rebooting node out


@dataclass
class Outcome:
    """One thing pitstop did (or, in dry-run, would have done)."""

    action: str  # drain | fail | down | reboot | hold | release | requeue | end_step | resume | replace_command | breaker | unfence | return_check
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


class _Reported(list):
    """A fence's outcomes, each handed to a callback as it is appended."""

    def __init__(self, report: Callable[[Outcome], None] | None) -> None:
        super().__init__()
        self.report = report

    def append(self, outcome: Outcome) -> None:
        super().append(outcome)
        if self.report is not None:
            self.report(outcome)

    def __iadd__(self, outcomes):  # type: ignore[override]
        for outcome in outcomes:
            self.append(outcome)
        return self


class NodeActions:
    """What the agent on `node` may do to Slurm."""

    def __init__(self, slurm: Slurm, node: str, *, dry_run: bool = False,
                 max_fenced_share: float = 0.5, breaker_window_s: float = 3600.0,
                 settle_s: float = 1.5, replace_command: Sequence[str] = (),
                 restarts_in_allocation: Callable[[Job], bool] = lambda job: False,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.slurm = slurm
        self.node = node
        self.dry_run = dry_run
        self.max_fenced_share = max_fenced_share
        self.breaker_window_s = breaker_window_s
        self.settle_s = settle_s
        self.replace_command = list(replace_command)
        self.restarts_in_allocation = restarts_in_allocation  # the job restarts its own steps
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

    def fence(self, action_class: str, reason: str, requeue_jobs: bool = True,
              on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        """Drain, set down, reboot or replace this node, within the blast-radius limit.
        Once the node is fenced, each outcome goes to `on_outcome` as it comes: the drain
        and the job's restart are on record before the breaker's settle and the reboot's
        wait for the node to empty (seconds later)."""
        if action_class not in FENCE_CLASSES:
            raise ValueError(f"not a fence class: {action_class!r}")
        if not reason.startswith(PITSTOP_REASON_PREFIX):
            raise ValueError("pitstop's reasons start with 'pitstop:'")
        state = {"replace": "fail", "down": "down"}.get(action_class, "drain")
        if action_class == "down":
            # Slurm requeues a DOWN node's --requeue jobs itself (and ends the steps of
            # --no-kill jobs there): a requeue from here would only race it.
            requeue_jobs = False
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
        outcomes = _Reported(on_outcome)
        outcomes.append(self._node_update(state, reason))
        if not outcomes[0].ok:
            return outcomes
        if action_class == "reboot":
            # No state holds a rebooting node out: Slurm 22.05 with ReturnToService=1
            # "returns to service" a nextstate=down node at a registration after its
            # reboot and can hand it a pending job before the agent's drain (seen in CI).
            # A maintenance reservation does hold it, whatever the node's state, until
            # the agent's return check ends (`release_hold`). It comes first, before the
            # node's jobs restart: a job growing back to its size must not take the node
            # while the agent waits for it to empty (seen in the demo).
            outcomes.append(self.hold_for_reboot(reason))
        if requeue_jobs:
            # A job that restarts in its allocation loses only its step here, which takes
            # no capacity away: it needs no wait for the breaker's verdict (1.5 s a fault).
            outcomes += self.requeue_jobs_on_node(in_allocation=True)
        self.sleep(self.settle_s)
        after = self.breaker()
        rank = after.rank(self.node)
        if rank is not None and rank >= after.allowed:
            self.slurm.resume(self.node)
            if action_class == "reboot":
                self.release_hold()
            outcomes.append(Outcome("unfence", reason=reason,
                                    detail=f"ranked {rank + 1} of {len(after.fenced)} fences, "
                                           f"{after.allowed} allowed: fence taken back"))
            outcomes.append(self._trip(after, reason, "fence taken back"))
            return outcomes
        if requeue_jobs:
            outcomes += self.requeue_jobs_on_node(in_allocation=False)
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
        if action_class == "down":  # Slurm requeues the jobs of a DOWN node itself
            return [Outcome(state, dry_run=True, reason=reason,
                            detail=f"would set {self.node} DOWN (Slurm requeues its jobs)")]
        planned = [Outcome(state, dry_run=True, reason=reason, detail=f"would {state} {self.node}")]
        for job in self._restartable():
            planned.append(Outcome("requeue", dry_run=True, job_id=job.job_id,
                                   detail=f"would requeue job {job.job_id}"))
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
        update = {"fail": self.slurm.fail, "down": self.slurm.set_down}.get(state, self.slurm.drain)
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

    def _restartable(self, job_ids: Sequence[str] | None = None) -> list[Job]:
        jobs = self.slurm.jobs(states="RUNNING,COMPLETING,CONFIGURING")
        found = []
        for job in jobs:
            if job_ids is not None and job.job_id not in job_ids:
                continue
            if job_ids is None and self.node not in job.nodes:
                continue
            if not (job.running or job.state == "CONFIGURING"):
                continue
            if job.requeue or self.restarts_in_allocation(job):
                found.append(job)
        return found

    def requeue_jobs_on_node(self, in_allocation: bool | None = None) -> list[Outcome]:
        """Restart the jobs on this fenced node (those that restart in their allocation, or
        the others, or, with None, all): a job that restarts in its allocation loses only
        its steps on this node (its batch script starts them again on healthy nodes, this
        one left out); any other job is requeued."""
        return [self._restart(job, only_on_this_node=True) for job in self._restartable()
                if in_allocation is None or self.restarts_in_allocation(job) == in_allocation]

    def requeue(self, job_id: str) -> Outcome:
        """Restart one job so it resumes from its checkpoint; the node stays in service."""
        if self.dry_run:
            return Outcome("requeue", dry_run=True, job_id=job_id, detail=f"would restart job {job_id}")
        found = self._restartable([job_id])
        if not found:
            return Outcome("requeue", ok=False, job_id=job_id,
                           detail="not requeued: not running, or submitted with --no-requeue")
        return self._restart(found[0], only_on_this_node=False)

    def _restart(self, job: Job, only_on_this_node: bool) -> Outcome:
        if not self.restarts_in_allocation(job):
            return self._call("requeue", lambda: self.slurm.requeue(job.job_id), job_id=job.job_id)
        try:
            steps = self.slurm.steps(job.job_id, exclude_names=[WARM_STEP_NAME])  # warm servers stay
            doomed = [step for step, nodes in steps.items() if not only_on_this_node or self.node in nodes]
            self.slurm.kill_steps(job.job_id, doomed)
        except SlurmError as exc:
            log.error("ending the steps of job %s failed: %s", job.job_id, exc)
            return Outcome("end_step", ok=False, job_id=job.job_id, detail=str(exc))
        if not doomed:
            return Outcome("end_step", job_id=job.job_id,
                           detail="no step of it runs here now: its batch script is between steps")
        return Outcome("end_step", job_id=job.job_id,
                       detail=f"ended step {', '.join(doomed)}: its batch script starts it again "
                              "from the newest checkpoint on the allocation's healthy nodes")

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

    @property
    def hold_name(self) -> str:
        """The maintenance reservation that holds this node from its reboot until its
        return check ends (not `pitstop-…`: that prefix is the training plans')."""
        return f"{HOLD_PREFIX}{self.node}"

    def hold_for_reboot(self, reason: str) -> Outcome:
        """Reserve this node for maintenance (MAINT, IGNORE_JOBS, no end): no job that
        does not name the reservation can start on it, in any node state."""
        if self.slurm.reservation(self.hold_name) is not None:
            return Outcome("hold", reason=reason, detail=f"reservation {self.hold_name} already holds {self.node}")
        outcome = self._call("hold", lambda: self.slurm.create_reservation(
            self.hold_name, "now", duration="UNLIMITED", nodes=[self.node], flags=("MAINT", "IGNORE_JOBS")),
            reason)
        if outcome.ok:
            outcome.detail = f"reservation {self.hold_name} holds {self.node} until its return check ends"
        return outcome

    def release_hold(self) -> Outcome | None:
        """Delete this node's reboot hold; None when there is none."""
        if self.dry_run or self.slurm.reservation(self.hold_name) is None:
            return None
        outcome = self._call("release", lambda: self.slurm.delete_reservation(self.hold_name))
        if outcome.ok:
            outcome.detail = f"reservation {self.hold_name} deleted"
        return outcome

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
