"""All-reduce bus bandwidth, measured the way nccl-tests measures it, by one rank each.

One worker per device (a node's local check) or per node (`pitstop check cluster`, one
task per node under srun). It times `iterations` all-reduces of `size` bytes and reports
nccl-tests' figures: algbw = size / time, busbw = algbw × 2(n−1)/n, so a figure compares
across rank counts. In cluster mode it then measures every pair of ranks, in rounds of
disjoint pairs (a round-robin schedule), so a slow link or a slow node shows in the pairs
it belongs to. Each rank writes its own JSON file; the caller reads them.

Rank, world size and rendezvous come from torchrun's variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) or srun's (SLURM_PROCID, SLURM_NTASKS). Test knob:
PITSTOP_TEST_SLOW_RANK=<node> makes that node sleep before each all-reduce.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

from pitstop.fsutil import write_json_atomic

SLOW_RANK_ENV = "PITSTOP_TEST_SLOW_RANK"
SLOW_SECONDS_ENV = "PITSTOP_TEST_SLOW_SECONDS"


def bus_factor(ranks: int) -> float:
    """nccl-tests' all-reduce bus-bandwidth factor: 2(n−1)/n."""
    return 2 * (ranks - 1) / ranks if ranks > 1 else 1.0


def round_robin_pairs(ranks: int) -> list[list[tuple[int, int]]]:
    """Every pair of ranks exactly once, in rounds where no rank appears twice (the circle
    method); an odd rank count gets a bye each round."""
    players = list(range(ranks)) + ([None] if ranks % 2 else [])
    count = len(players)
    rounds = []
    for _ in range(count - 1):
        pairs = []
        for i in range(count // 2):
            a, b = players[i], players[count - 1 - i]
            if a is not None and b is not None:
                pairs.append((min(a, b), max(a, b)))
        rounds.append(pairs)
        players = [players[0], players[-1], *players[1:-1]]
    return rounds


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _slow_seconds() -> float:
    if os.environ.get(SLOW_RANK_ENV) and os.environ[SLOW_RANK_ENV] == node_name():
        return float(os.environ.get(SLOW_SECONDS_ENV, "0.2"))
    return 0.0


def measure(dist, torch, size_bytes: int, iterations: int, device, group=None, ranks: int | None = None) -> dict:
    """Time `iterations` all-reduces in `group`; every member calls this together."""
    elements = max(size_bytes // 4, 1)
    tensor = torch.ones(elements, dtype=torch.float32, device=device)
    slow = _slow_seconds()
    ranks = ranks or dist.get_world_size(group)
    for _ in range(2):  # warm-up: connections, allocator
        dist.all_reduce(tensor, group=group)
    dist.barrier(group=group)
    _sync(torch, device)
    started = time.perf_counter()
    for _ in range(iterations):
        if slow:
            time.sleep(slow)
        dist.all_reduce(tensor, group=group)
    _sync(torch, device)
    per_op = (time.perf_counter() - started) / iterations
    algbw = elements * 4 / per_op / 1e9
    return {"ranks": ranks, "size_bytes": elements * 4, "iterations": iterations,
            "time_us": round(per_op * 1e6, 1), "algbw_gbs": round(algbw, 4),
            "busbw_gbs": round(algbw * bus_factor(ranks), 4)}


def _sync(torch, device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def _rank_and_world() -> tuple[int, int, int]:
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    return rank, world, local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for rank-<r>.json")
    parser.add_argument("--size-bytes", type=int, default=64 << 20)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--pairs", action="store_true", help="also measure every pair of ranks")
    parser.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    rank, world, local = _rank_and_world()
    os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
    if "MASTER_PORT" not in os.environ:
        # one port per job, below the ephemeral range and below the testbed's port blocks
        os.environ["MASTER_PORT"] = str(10000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 10000)
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=args.timeout))
    try:
        report = {"rank": rank, "world": world, "node": node_name(), "backend": backend,
                  "all": measure(dist, torch, args.size_bytes, args.iterations, device)}
        if args.pairs and world == 2:
            report["pairs"] = [{**report["all"], "pair": [0, 1]}]
        elif args.pairs and world > 2:
            rounds = round_robin_pairs(world)
            # every rank creates every group, in the same order (torch.distributed's rule)
            groups = {pair: dist.new_group(list(pair)) for pairs in rounds for pair in pairs}
            report["pairs"] = []
            for pairs in rounds:
                mine = next((p for p in pairs if rank in p), None)
                if mine is not None:
                    figures = measure(dist, torch, args.size_bytes, args.iterations, device,
                                      group=groups[mine], ranks=2)
                    report["pairs"].append({**figures, "pair": list(mine)})
                dist.barrier()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / f"rank-{rank}.json", report)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
