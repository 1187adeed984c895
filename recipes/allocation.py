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

Exit 0: printed. Exit 4: fewer than NODES usable nodes, or the batch host itself is no
longer usable (the batch shell cannot leave its node): the job must be requeued.
Exit 1: Slurm could not be asked; the message says why.
"""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import dataclass, field
from typing import Sequence

from pitstop.model import Job, Node

EXIT_REQUEUE = 4


@dataclass(frozen=True)
class StepNodes:
    """Where the next step runs, or why it cannot run in this allocation."""

    step: list[str] = field(default_factory=list)
    spares: list[str] = field(default_factory=list)
    give_back: list[str] = field(default_factory=list)
    unusable_reason: str = ""  # set when the job must be requeued instead

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
        return StepNodes(give_back=give_back, unusable_reason=(
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitstop.recipes.allocation",
                                     description="The nodes of this job's allocation the next step runs on.")
    parser.add_argument("job_id")
    parser.add_argument("nodes", type=int, help="how many nodes the step needs")
    args = parser.parse_args(argv)
    from pitstop.slurm import Slurm, SlurmError

    slurm = Slurm()
    try:
        job = slurm.job(args.job_id)
        if job is None:
            print(f"pitstop: Slurm does not know job {args.job_id}", file=sys.stderr)
            return 1
        by_name = {n.name: n for n in slurm.nodes()}
        chosen = pick(job, by_name, args.nodes)
        if chosen.fits and chosen.give_back:
            slurm.shrink_job(args.job_id, [n for n in job.nodes if n not in chosen.give_back])
            print(f"pitstop: gave back {', '.join(chosen.give_back)} (no longer usable) from job "
                  f"{args.job_id}", file=sys.stderr)
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
