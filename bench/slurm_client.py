"""Benchmarks of the foundation: testbed cold start, one whole-cluster read, parse speed.

Prints figures; never passes or fails on time. Needs root (it brings up testbeds in
private directories under /tmp and stops them again).

    .venv/bin/python bench/slurm_client.py [--sizes 3,16,64] [--reads 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pitstop.slurm import parse
from pitstop.testbed.cluster import Testbed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cold_start(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        directory = Path(tempfile.mkdtemp(prefix="pitstop-bench-", dir="/tmp"))
        bed = Testbed(directory)
        started = time.perf_counter()
        try:
            bed.up(nodes=3, timeout=60)
            times.append(time.perf_counter() - started)
        finally:
            bed.down()
            shutil.rmtree(directory, ignore_errors=True)
    return times


def cluster_read(nodes: int, reads: int) -> dict[str, float | str]:
    directory = Path(tempfile.mkdtemp(prefix="pitstop-bench-", dir="/tmp"))
    bed = Testbed(directory)
    try:
        bed.up(nodes=nodes, timeout=120)
        slurm = bed.slurm()
        script = directory / "jobs" / "sleep.sh"
        script.write_text("#!/bin/bash\nsleep 300\n")
        for _ in range(max(1, nodes // 2)):
            slurm.submit(script, ["-N1", "-o", "/dev/null"], cwd=directory / "jobs")
        slurm.wait_for(lambda s: sum(j.running for j in s.jobs()) >= max(1, nodes // 2), 60,
                       what="benchmark jobs to run")
        snapshot_times, raw_times = [], []
        for _ in range(reads):
            started = time.perf_counter()
            snapshot = slurm.snapshot()
            snapshot_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            for args in (["sinfo", "-N", "-h"], ["squeue", "-h"]):
                subprocess.run(args, env=slurm.env, capture_output=True, check=True)
            raw_times.append(time.perf_counter() - started)
        node_output = slurm.run(["sinfo", "-N", "-h", "-O", parse.format_arg(parse.NODE_FIELDS)])
        return {"nodes": nodes, "jobs": len(snapshot.jobs),
                "p50_ms": 1000 * statistics.median(snapshot_times),
                "p99_ms": 1000 * percentile(snapshot_times, 0.99),
                "raw_p50_ms": 1000 * statistics.median(raw_times),
                "node_output": node_output}
    finally:
        bed.down()
        shutil.rmtree(directory, ignore_errors=True)


def scaled_output(sample: str, count: int) -> str:
    """`sample`'s node rows repeated under new names until there are `count` of them."""
    rows = [r for r in sample.split(parse.RECORD_SEP) if r.strip()]
    out = []
    for i in range(count):
        row = rows[i % len(rows)].lstrip("\n")
        name, rest = row.split(parse.FIELD_SEP, 1)
        out.append(f"gpu-{i:05d}{parse.FIELD_SEP}{rest}")
    return "".join(f"{row}{parse.RECORD_SEP}\n" for row in out)


def parse_speed(sample: str, count: int = 4096, repeats: int = 20) -> dict[str, float]:
    text = scaled_output(sample, count)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        nodes = parse.nodes_from_format(text)
        times.append(time.perf_counter() - started)
    if len(nodes) != count:
        raise RuntimeError(f"parsed {len(nodes)} nodes out of {count}")
    per_1000 = 1000 * statistics.median(times) / (count / 1000)
    return {"nodes": count, "ms_per_1000_nodes": per_1000, "total_ms": 1000 * statistics.median(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="3,16,64")
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--cold-runs", type=int, default=3)
    args = parser.parse_args()

    print("pitstop foundation benchmarks")
    starts = cold_start(args.cold_runs)
    print(f"testbed cold start, 3 nodes to idle: median {statistics.median(starts):.2f} s "
          f"(min {min(starts):.2f}, max {max(starts):.2f}, {len(starts)} runs)")

    print("\nwhole-cluster read (one sinfo + one squeue, parsed), beside the bare commands:")
    print(f"{'nodes':>6} {'jobs':>5} {'p50 ms':>8} {'p99 ms':>8} {'bare p50 ms':>12} {'ratio':>6}")
    sample = ""
    for size in [int(s) for s in args.sizes.split(",")]:
        result = cluster_read(size, args.reads)
        sample = str(result["node_output"])
        print(f"{result['nodes']:>6} {result['jobs']:>5} {result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f} "
              f"{result['raw_p50_ms']:>12.1f} {result['p50_ms'] / result['raw_p50_ms']:>6.2f}")

    speed = parse_speed(sample)
    print(f"\nparse of sinfo -O output scaled to {speed['nodes']} nodes: "
          f"{speed['ms_per_1000_nodes']:.2f} ms per 1,000 nodes ({speed['total_ms']:.1f} ms in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
