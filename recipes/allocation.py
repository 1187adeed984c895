"""Which nodes of a job's allocation its next training step runs on.

A run restarts in its allocation (see `pitstop.rundir`): before every step its batch
script asks `python -m pitstop.recipes.allocation JOB_ID NODES`. The answer is the
allocation's nodes that Slurm still shows usable (not drained, failed, down, rebooting or
unresponsive), in allocation order, the first NODES of them for the step; the others
stay as spares. Nodes no longer usable are given back to Slurm (`scontrol update
jobid=… NodeList=…`), so that a fenced node can be rebooted or replaced while the job
goes on without it. It prints one line: the step's nodes, the rendezvous address (the
first step node, at its NodeAddr when its name does not resolve here) and all the
allocation's usable nodes, spares too (where a warm start's servers run):

    node1,node3 127.0.0.1 node1,node3,node4

When fewer than NODES usable nodes are left, it first asks Slurm for free nodes to add
to the job (job expansion, `Slurm.grow_job`): a restart on a node that came back beats a
requeue.

`--keep TOTAL` is the batch script's background keeper: while the step runs it grows the
allocation back to TOTAL usable nodes (a spare used by an earlier fault is replaced once a
node is free again), gives back unusable nodes the running step does not use (a fenced
spare; a node Slurm would not let go of before), and prints the usable nodes, spares too,
on one line.

Exit 0: printed. Exit 4: fewer than NODES usable nodes, or the batch host itself is no
longer usable (the batch shell cannot leave its node): the job must be requeued.
Exit 5 (`--keep`): Slurm does not let jobs grow here (SchedulerParameters lacks
permit_job_expansion); the keeper stops asking. Exit 1: Slurm could not be asked; the
message says why.
"""

from __future__ import annotations

import argparse
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


def pick(job: Job, nodes: dict[str, Node], need: int) -> StepNodes:
    """Pure: the step's nodes from the job's allocation and Slurm's view of each node."""
    usable = [name for name in job.nodes if name in nodes and nodes[name].available]
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


SETTLE_S = 15.0  # how long growth waits for steps still ending on nodes the job gave up


def _settled(slurm, job_id: str) -> Job | None:
    """The job once no step of it runs on a node it no longer holds, else None after
    SETTLE_S: Slurm 22.05 miscounts a job's CPUs when a resize lands while such a step is
    still being torn down (a node that failed under a step), and the next step then waits
    for CPUs forever."""
    import time

    deadline = time.monotonic() + SETTLE_S
    while True:
        job = slurm.job(job_id)
        if job is None:
            return None
        held = set(job.nodes)
        if all(set(nodes) <= held for nodes in slurm.steps(job_id).values()):
            return job
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _grow(slurm, job: Job, count: int) -> list[str]:
    """Free nodes added to the job, [] when none is free; says which on stderr."""
    settled = _settled(slurm, job.job_id)
    if settled is None:
        print(f"pitstop: job {job.job_id} still has steps ending on nodes it gave up; not growing now",
              file=sys.stderr)
        return []
    job.nodes[:] = settled.nodes
    added = slurm.grow_job(job, count, immediate_s=1)
    if added:
        print(f"pitstop: job {job.job_id} grew by {', '.join(added)}", file=sys.stderr)
    return added


def give_back(slurm, job: Job, nodes: list[str]) -> bool:
    """Give `nodes` back to Slurm, so that they can be rebooted or replaced. A refusal is
    not the run's end: the step runs without them, and the keeper tries again later.
    (Slurm refuses to resize a job twice when it keeps no accounting database.)"""
    import time

    from pitstop.slurm import SlurmError

    try:
        # No step may still run on them (a warm server, a step being torn down): Slurm
        # 22.05 miscounts the job's CPUs when a resize takes a node from under a step, and
        # every later step then waits for CPUs forever (seen on the testbed).
        doomed = [step for step, on in slurm.steps(job.job_id).items() if set(on) & set(nodes)]
        if doomed:
            slurm.kill_steps(job.job_id, doomed)
            deadline = time.monotonic() + SETTLE_S
            while set(doomed) & set(slurm.steps(job.job_id)) and time.monotonic() < deadline:
                time.sleep(0.2)
        slurm.shrink_job(job.job_id, [n for n in job.nodes if n not in nodes])
    except SlurmError as exc:
        print(f"pitstop: could not give back {', '.join(nodes)} from job {job.job_id} ({exc}); "
              "the step runs without them", file=sys.stderr)
        return False
    print(f"pitstop: gave back {', '.join(nodes)} (no longer usable) from job {job.job_id}", file=sys.stderr)
    job.nodes[:] = [n for n in job.nodes if n not in nodes]
    return True


def keep(slurm, job_id: str, total: int, running: set[str]) -> int:
    """The keeper's round: give back unusable nodes the running step does not use, grow
    back toward `total` usable nodes, print the usable ones."""
    from pitstop.slurm import SlurmError

    job = slurm.job(job_id)
    if job is None:
        print(f"pitstop: Slurm does not know job {job_id}", file=sys.stderr)
        return 1
    by_name = {n.name: n for n in slurm.nodes()}
    usable = [name for name in job.nodes if name in by_name and by_name[name].available]
    idle_unusable = [n for n in job.nodes if n not in usable and n not in running and n != job.batch_host]
    if idle_unusable:
        give_back(slurm, job, idle_unusable)
    status = 0
    if len(usable) < total:
        try:
            usable += _grow(slurm, job, total - len(usable))
        except SlurmError as exc:
            print(f"pitstop: job {job_id} cannot grow back to {total} nodes: {exc}", file=sys.stderr)
            status = EXIT_CANNOT_GROW if "not supported" in str(exc) else 1
    print(",".join(usable))
    return status


def _running_step_nodes() -> set[str]:
    """The nodes of the attempt running now, from the run's attempts (the batch script's
    PITSTOP_RUN_DIR): the keeper never gives those back under a running step."""
    import os
    from pathlib import Path

    from pitstop.rundir import read_attempts

    run_dir = os.environ.get("PITSTOP_RUN_DIR")
    records = read_attempts(Path(run_dir)) if run_dir else []
    if records and records[-1].get("event") == "start":
        return set(str(records[-1].get("nodes", "")).split(","))
    return set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitstop.recipes.allocation",
                                     description="The nodes of this job's allocation the next step runs on.")
    parser.add_argument("job_id")
    parser.add_argument("nodes", type=int, help="how many nodes the step needs")
    parser.add_argument("--keep", type=int, metavar="TOTAL",
                        help="grow the allocation back to TOTAL nodes and print the usable ones")
    args = parser.parse_args(argv)
    from pitstop.slurm import Slurm, SlurmError

    slurm = Slurm()
    if args.keep is not None:
        try:
            return keep(slurm, args.job_id, args.keep, _running_step_nodes())
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
        if chosen.too_few:  # ask for free nodes, pick again (the unusable are given back below)
            try:
                added = _grow(slurm, job, args.nodes - (len(job.nodes) - len(chosen.give_back)))
            except SlurmError as exc:
                print(f"pitstop: job {args.job_id} cannot grow: {exc}", file=sys.stderr)
                added = []
            if added:
                job = slurm.job(args.job_id) or job
                by_name = {n.name: n for n in slurm.nodes()}
                chosen = pick(job, by_name, args.nodes)
        if chosen.fits and chosen.give_back:
            give_back(slurm, job, chosen.give_back)
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
