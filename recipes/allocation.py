"""Which nodes of a job's allocation its next training step runs on.

A run restarts in its allocation (see `pitstop.rundir`): before every step its batch
script asks `python -m pitstop.recipes.allocation JOB_ID NODES`. The answer is the
allocation's nodes that Slurm still shows usable (not drained, failed, down, rebooting or
unresponsive), in allocation order, the first NODES of them for the step; the others
stay as spares. Nodes no longer usable are given back to Slurm (`scontrol update
jobid=… NodeList=…`), so that a fenced node can be rebooted or replaced: only while the
job runs no step at all (see `quiet`: Slurm 22.05 loses count of a step's cores when the
job is resized under it), so here, between attempts. With `--overlap` (warm start:
the servers and the training step all overlap, none holds cores) only the servers on
the nodes given back stop, and a used spare is replaced at every restart where a node
is free (see `plan_resize`). It prints one line: the step's nodes, the rendezvous
address (the first step node, at its NodeAddr when its name does not resolve here) and
all the allocation's usable nodes, spares too (where a warm start's servers run):

    node1,node3 127.0.0.1 node1,node3,node4

When fewer than NODES usable nodes are left, it first asks Slurm for free nodes to add
to the job (job expansion, `Slurm.grow_job`), up to `--total` (the spares too) where
that many are free: a restart on a node that came back beats a requeue.

`--keep TOTAL` is the batch script's background keeper: while the step trains and no
other step runs beside it, it grows the allocation back to TOTAL usable nodes (a spare
used by an earlier fault is replaced once a node is free again), and prints the usable
nodes, spares too, on one line.

Exit 0: printed. Exit 4: fewer than NODES usable nodes, the batch host itself is no
longer usable (the batch shell cannot leave its node), or (without `--overlap`) a step
runs on a node that does not respond (`stuck_steps`): the job must be requeued.
Exit 5 (`--keep`): Slurm does not let jobs grow here (SchedulerParameters lacks
permit_job_expansion); the keeper stops asking. Exit 1: Slurm could not be asked; the
message says why.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Sequence

from pitstop.model import Job, Node

EXIT_REQUEUE = 4
EXIT_CANNOT_GROW = 5


@dataclass(frozen=True)
class StepNodes:
    """Where the next step runs, or why it cannot run in this allocation."""

    step: list[str] = field(default_factory=list)
    spares: list[str] = field(default_factory=list)
    give_back: list[str] = field(default_factory=list)
    unusable_reason: str = ""  # set when the job must be requeued instead
    too_few: bool = False  # the reason is too few usable nodes (more may be added)

    @property
    def fits(self) -> bool:
        return not self.unusable_reason


def pick(job: Job, nodes: dict[str, Node], need: int, first: Sequence[str] = ()) -> StepNodes:
    """Pure: the step's nodes from the job's allocation and Slurm's view of each node;
    the usable nodes named in `first` (the allocation's before a grow: their warm servers
    are ready, a grown node's still imports) come before the others."""
    usable = [name for name in job.nodes if name in nodes and nodes[name].available]
    usable.sort(key=lambda name: name not in first)  # stable: allocation order within each
    give_back = [name for name in job.nodes if name not in usable]
    if job.batch_host and job.batch_host not in usable:
        state = nodes[job.batch_host].state_label if job.batch_host in nodes else "unknown"
        return StepNodes(give_back=give_back,
                         unusable_reason=f"the batch host {job.batch_host} is no longer usable ({state})")
    if len(usable) < need:
        return StepNodes(give_back=give_back, too_few=True, unusable_reason=(
            f"{len(usable)} usable node(s) left in the allocation ({', '.join(usable) or 'none'}), "
            f"{need} needed"))
    return StepNodes(step=usable[:need], spares=usable[need:], give_back=give_back)


def rendezvous_address(node: Node) -> str:
    """The node's name when it resolves here, else its NodeAddr (a testbed's nodes)."""
    try:
        socket.getaddrinfo(node.name, None)
        return node.name
    except OSError:
        return node.address or node.name


QUIET_S = 15.0  # how long placement waits for the job's steps to be torn down
TEARDOWN_S = 5.0  # how long after srun returned a killed step may still be torn down


def quiet(slurm, job_id: str, running: int, ended_at: float | None, wait_s: float = 0.0,
          teardown_s: float = TEARDOWN_S) -> bool:
    """Whether the job may be resized now: its last step ended (`ended_at`, srun's return
    or its kill) at least TEARDOWN_S ago and Slurm lists at most `running` steps of it,
    warm servers included; waits up to `wait_s` for both. Seen on the testbed (Slurm
    22.05): a job shrunk under a running step, or resized under an overlapping one (a
    warm server), keeps those steps' cores marked in use after they end, and every later
    step on those nodes is refused as busy; a step still being torn down (2-3 s after
    srun returns, while squeue no longer lists it) leaks its CPUs the same way ("unable to
    update job's core use information due to job resizing"). Growing under a running
    training step is safe: Slurm rebuilds that step's core map. Steps that overlap hold
    no cores: `teardown_s` is shorter for them."""
    import time

    from pitstop.waiting import wait_until

    def settled() -> bool:
        return ((ended_at is None or time.time() - ended_at >= teardown_s)
                and len(slurm.steps(job_id)) <= running)

    try:
        return wait_until(settled, wait_s, what=f"job {job_id}'s steps to be torn down", interval=0.2)
    except TimeoutError:
        return False


def _grow(slurm, job: Job, count: int, at_least: int | None = None) -> list[str]:
    """Free nodes added to the job (`at_least` of them, up to `count`), [] when too
    few are free; says which on stderr."""
    added = slurm.grow_job(job, count, immediate_s=1, at_least=at_least)
    if added:
        print(f"pitstop: job {job.job_id} grew by {', '.join(added)}", file=sys.stderr)
    return added


def give_back(slurm, job: Job, nodes: list[str]) -> bool:
    """Give `nodes` back to Slurm, so that they can be rebooted or replaced; the caller
    made sure no step runs (`quiet`). A refusal is not the run's end: the step runs
    without them, and the next restart tries again. (Slurm refuses to resize a job twice
    when it keeps no accounting database.)"""
    from pitstop.slurm import SlurmError

    try:
        slurm.shrink_job(job.job_id, [n for n in job.nodes if n not in nodes])
    except SlurmError as exc:
        print(f"pitstop: could not give back {', '.join(nodes)} from job {job.job_id} ({exc}); "
              "the step runs without them", file=sys.stderr)
        return False
    print(f"pitstop: gave back {', '.join(nodes)} (no longer usable) from job {job.job_id}", file=sys.stderr)
    job.nodes[:] = [n for n in job.nodes if n not in nodes]
    return True


def keep(slurm, job_id: str, total: int, attempt: "RunningAttempt") -> int:
    """The keeper's round: grow back toward `total` usable nodes, print the usable ones.
    It grows only while the attempt trains (its heartbeat is in: a resize while its step
    is being created cost a restart in the e2e test) and its step is the job's only one
    (see `quiet`: never beside warm servers, never while the last step is torn down).
    Unusable nodes wait for the next restart to be given back."""
    from pitstop.slurm import SlurmError

    job = slurm.job(job_id)
    if job is None:
        print(f"pitstop: Slurm does not know job {job_id}", file=sys.stderr)
        return 1
    by_name = {n.name: n for n in slurm.nodes()}
    usable = [name for name in job.nodes if name in by_name and by_name[name].available]
    status = 0
    if len(usable) < total and attempt.trains and quiet(slurm, job_id, running=1, ended_at=attempt.last_end):
        try:
            usable += _grow(slurm, job, total - len(usable), at_least=1)
        except SlurmError as exc:
            print(f"pitstop: job {job_id} cannot grow back to {total} nodes: {exc}", file=sys.stderr)
            status = EXIT_CANNOT_GROW if "not supported" in str(exc) else 1
    print(",".join(usable))
    return status


@dataclass(frozen=True)
class RunningAttempt:
    """The batch script's attempt running now, from the run directory: whether it trains
    yet (its heartbeat is in) and when the step before it ended."""

    trains: bool = False
    last_end: float | None = None

    @classmethod
    def read(cls, run_dir: str | None) -> "RunningAttempt":
        from pathlib import Path

        from pitstop.rundir import read_attempts, read_heartbeat

        records = read_attempts(Path(run_dir)) if run_dir else []
        ends = [float(r["time"]) for r in records if r.get("event") == "end" and "time" in r]
        last_end = ends[-1] if ends else None
        if not records or records[-1].get("event") != "start":
            return cls(last_end=last_end)
        beat = read_heartbeat(Path(run_dir)) or {}
        return cls(trains=beat.get("attempt") == records[-1].get("attempt"), last_end=last_end)


def stuck_steps(slurm, job: Job, by_name: dict[str, Node]) -> list[str]:
    """The job's steps that run on a node that does not respond: Slurm removes such a node
    from the job (`--no-kill`) under its running steps, and Slurm 22.05 cannot take their
    cores back when they end ("unable to update job's core use information due to job
    resizing"): steps on the nodes left are refused as busy a few restarts later (seen
    in the goodput bench, 2 x 60 s of refused steps and then a requeue anyway). Not asked
    with `--overlap`: when every step overlaps, none is refused for cores Slurm still
    counts (on the testbed: three dead slurmds, each logging that miscount, in a campaign
    of six restarts in one allocation, every step started at once)."""
    unreachable = {name for name, node in by_name.items() if node.unreachable}
    return [step for step, on in slurm.steps(job.job_id).items() if unreachable & set(on)]


@dataclass(frozen=True)
class Resize:
    """What a restart changes in the allocation: the nodes to give back and how many free
    nodes to ask for (`grow`, of which `at_least` are needed for the step to fit)."""

    give_back: list[str] = field(default_factory=list)
    grow: int = 0
    at_least: int = 0

    def __bool__(self) -> bool:
        return bool(self.give_back or self.grow)


def free_nodes(job: Job, nodes: dict[str, Node]) -> list[str]:
    """Idle usable nodes outside the job: what a grow can get at once."""
    return [name for name, node in nodes.items()
            if name not in job.nodes and node.available and node.state == "IDLE"]


def plan_resize(job: Job, nodes: dict[str, Node], chosen: StepNodes, need: int, total: int,
                overlap: bool) -> Resize:
    """Pure: the resize between two attempts. The unusable nodes go back (so that they can
    be rebooted or replaced) and, when too few usable ones are left, free nodes are asked
    for, back to `total` (spares too). With `overlap` (warm start: every step overlaps,
    none counts against the allocation) a used spare is also replaced at every restart
    where a node is free: the resize costs about a second there, and the next fault
    finds a spare with its server ready."""
    if not chosen.fits and not chosen.too_few:
        return Resize()  # the batch host is gone: a requeue, nothing to resize
    usable = len(job.nodes) - len(chosen.give_back)
    short = max(need, total) - usable
    if short > 0 and (chosen.too_few or (overlap and free_nodes(job, nodes))):
        return Resize(give_back=list(chosen.give_back), grow=short, at_least=max(1, need - usable))
    return Resize(give_back=list(chosen.give_back) if chosen.fits else [])


OVERLAP_TEARDOWN_S = 1.0  # steps that overlap hold no cores: a second for Slurm to settle


def _resize(slurm, job: Job, by_name: dict[str, Node], chosen: StepNodes, need: int,
            last_end: float | None, total: int = 0, overlap: bool = False
            ) -> tuple[StepNodes, dict[str, Node]]:
    """Between attempts: give back the unusable nodes, then grow by free ones (see
    `plan_resize`); the new choice. The caller made sure no step is stuck on a node that
    does not respond (`stuck_steps`).

    Without `overlap` only once the job runs no step at all (`quiet`); warm servers are
    then stopped only when the step needs the room (a restart on the spare stays warm;
    the fenced node goes back at a restart that needs it). With `overlap` (every step,
    servers and training alike, overlaps) only the servers on the nodes given back are
    stopped, the others stay ready through the resize. Seen on the testbed (Slurm
    22.05): overlapping steps survive a give-back followed by a grow, and new ones start
    on every node after it; a grow first, then a give-back, left a grown node's steps
    refused as busy."""
    import time

    from pitstop.rundir import WARM_STEP_NAME
    from pitstop.slurm import SlurmError

    plan = plan_resize(job, by_name, chosen, need, total, overlap)
    if not plan:
        return chosen, by_name
    warm = slurm.steps(job.job_id, only_names=(WARM_STEP_NAME,))
    if overlap:
        doomed = [step for step, on in warm.items() if set(on) & set(plan.give_back)]
        teardown = OVERLAP_TEARDOWN_S
    elif warm and not chosen.too_few:
        return chosen, by_name  # the spare takes over warm; the fenced node goes back later
    else:
        doomed, teardown = list(warm), TEARDOWN_S
    if doomed:
        slurm.kill_steps(job.job_id, doomed)
        last_end = time.time()
    if not quiet(slurm, job.job_id, running=len(warm) - len(doomed), ended_at=last_end, wait_s=QUIET_S,
                 teardown_s=teardown):
        print(f"pitstop: job {job.job_id} still tears down its last step; not resizing it", file=sys.stderr)
        return chosen, by_name
    if overlap and plan.give_back:  # first: a grow before the give-back leaves steps refused
        give_back(slurm, job, plan.give_back)
    if plan.grow:
        try:
            added = _grow(slurm, job, plan.grow, at_least=plan.at_least)
        except SlurmError as exc:
            print(f"pitstop: job {job.job_id} cannot grow: {exc}", file=sys.stderr)
            added = []
        if added:
            before = job.nodes
            job = slurm.job(job.job_id) or job
            by_name = {n.name: n for n in slurm.nodes()}
            chosen = pick(job, by_name, need, first=before)
    if not overlap and chosen.fits and chosen.give_back:
        give_back(slurm, job, chosen.give_back)
    return chosen, by_name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitstop.recipes.allocation",
                                     description="The nodes of this job's allocation the next step runs on.")
    parser.add_argument("job_id")
    parser.add_argument("nodes", type=int, help="how many nodes the step needs")
    parser.add_argument("--total", type=int, metavar="TOTAL",
                        help="when the job must grow for the step, grow it back to TOTAL nodes where that many are free")
    parser.add_argument("--overlap", action="store_true",
                        help="every step of the job overlaps (warm start): resize around the running servers")
    parser.add_argument("--keep", type=int, metavar="TOTAL",
                        help="grow the allocation back to TOTAL nodes and print the usable ones")
    args = parser.parse_args(argv)
    from pitstop.slurm import Slurm, SlurmError

    slurm = Slurm()
    if args.keep is not None:
        try:
            return keep(slurm, args.job_id, args.keep, RunningAttempt.read(os.environ.get("PITSTOP_RUN_DIR")))
        except SlurmError as exc:
            print(f"pitstop: {exc}", file=sys.stderr)
            return 1
    try:
        job = slurm.job(args.job_id)
        if job is None:
            print(f"pitstop: Slurm does not know job {args.job_id}", file=sys.stderr)
            return 1
        by_name = {n.name: n for n in slurm.nodes()}
        chosen = pick(job, by_name, args.nodes)
        # With --overlap no step holds cores, so a miscount does not matter (see stuck_steps).
        stuck = [] if args.overlap else stuck_steps(slurm, job, by_name)
        if stuck:  # a fresh allocation, at once: this one's core count cannot be trusted
            chosen = StepNodes(unusable_reason=(
                f"step {', '.join(stuck)} runs on a node that does not respond, and Slurm cannot "
                "take its cores back in this allocation"))
        else:
            chosen, by_name = _resize(slurm, job, by_name, chosen, args.nodes,
                                      RunningAttempt.read(os.environ.get("PITSTOP_RUN_DIR")).last_end,
                                      total=args.total or args.nodes, overlap=args.overlap)
    except SlurmError as exc:
        print(f"pitstop: {exc}", file=sys.stderr)
        return 1
    if not chosen.fits:
        print(f"pitstop: job {args.job_id} cannot run its next step in its allocation: "
              f"{chosen.unusable_reason}", file=sys.stderr)
        return EXIT_REQUEUE
    print(",".join(chosen.step), rendezvous_address(by_name[chosen.step[0]]),
          ",".join(chosen.step + chosen.spares))
    return 0


if __name__ == "__main__":
    sys.exit(main())
