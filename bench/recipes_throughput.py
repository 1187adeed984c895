"""Benchmark of the tiny recipe's training throughput (issue #4): tokens/s of
`llama3-tiny-seq256-cpu-pretrain`, its real shape, launched with `pitstop recipes launch`
on one and on two nodes of a private testbed.

Prints figures; never passes or fails on time. Needs root (it brings up a testbed in a
private directory under /tmp and always stops it again). Each run trains `--steps` steps
(the recipe's checkpoint every 10 steps included, as it ships); the figure is the median
tokens/s of the steps after the first 5, read from the run's progress.jsonl (tokens/s
there is the whole job's: ranks x micro-batch x seq_len / step time).

All testbed "nodes" are processes on this one machine and share its cores (2 here), so a
second node adds ranks, not compute: scaling is not expected, and the 2-node figure
mostly shows the cost of gloo all-reduces between ranks that compete for the same cores.

    .venv/bin/python bench/recipes_throughput.py [--quick] [--steps 20] [--nodes 1,2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pitstop.rundir import iter_progress
from pitstop.testbed.cluster import Testbed
from pitstop.testbed.config import free_port_block

RECIPE = "llama3-tiny-seq256-cpu-pretrain"
WARMUP_STEPS = 5


def launch(bed: Testbed, nodes: int, steps: int) -> tuple[str, Path]:
    layout = bed.layout
    args = [sys.executable, "-m", "pitstop", "recipes", "launch", RECIPE, f"cluster.nodes={nodes}",
            f"trainer.max_steps={steps}", f"run.root={layout.jobs_dir / 'runs'}",
            f"cluster.rdzv_port={free_port_block(1)}", "--json"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **layout.env()}, cwd=layout.jobs_dir)
    if proc.returncode != 0:
        raise RuntimeError(f"pitstop recipes launch failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    return result["job_id"], Path(result["run_dir"])


def run_once(bed: Testbed, nodes: int, steps: int, timeout: float) -> dict:
    slurm = bed.slurm()
    started = time.perf_counter()
    job_id, run_dir = launch(bed, nodes, steps)
    job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.finished and j, timeout, interval=1.0,
                         what=f"job {job_id} ({nodes} node(s)) to finish")
    wall = time.perf_counter() - started
    records = [r for r in iter_progress(run_dir) if r.get("restart_count", 0) == 0]
    if job.state != "COMPLETED":
        log = run_dir / f"slurm-{job_id}.out"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no job output)"
        raise RuntimeError(f"job {job_id} on {nodes} node(s) ended {job.state}:\n{tail}")
    warm = [r for r in records if r["step"] > WARMUP_STEPS]
    if not warm:
        raise RuntimeError(f"job {job_id}: no step after the first {WARMUP_STEPS} in {run_dir}/progress.jsonl")
    return {"nodes": nodes, "job_id": job_id, "steps": len(records), "warm_steps": len(warm),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in warm),
            "min_tokens_per_s": min(r["tokens_per_s"] for r in warm),
            "max_tokens_per_s": max(r["tokens_per_s"] for r in warm),
            "step_time": statistics.median(r["step_time"] for r in warm),
            "first_step_time": records[0]["step_time"] if records else float("nan"),
            "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 steps a run instead of 20")
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps of each run (default 20)")
    parser.add_argument("--nodes", default="1,2", help="node counts to run, comma-separated")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each node count, alternated 1,2,1,2… so that both see the same noise "
                             "(default 2; 1 with --quick)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each job")
    args = parser.parse_args()
    steps = args.steps or (12 if args.quick else 20)
    if steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    counts = [int(n) for n in args.nodes.split(",")]
    repeats = max(1, args.repeats or (1 if args.quick else 2))

    directory = Path(tempfile.mkdtemp(prefix="pitstop-bench-recipe-", dir="/tmp"))
    bed = Testbed(directory)
    results = []
    try:
        bed.up(nodes=max(counts), timeout=120)
        print(f"pitstop recipe throughput: {RECIPE}, {steps} steps a run, testbed of {max(counts)} nodes "
              f"at {directory}; this machine has {os.cpu_count()} cores, shared by every node", flush=True)
        for nodes in [n for _ in range(repeats) for n in counts]:
            result = run_once(bed, nodes, steps, args.timeout)
            results.append(result)
            print(f"  {nodes} node(s): job {result['job_id']}, {result['steps']} steps logged, "
                  f"{result['tokens_per_s']:.0f} tokens/s (median of steps {WARMUP_STEPS + 1}..{steps}), "
                  f"{result['wall']:.0f} s from launch to finished", flush=True)
    finally:
        bed.down()
        shutil.rmtree(directory, ignore_errors=True)

    print(f"\n{'nodes':>5} {'ranks':>5} {'warm steps':>10} {'tokens/s':>9} {'min':>7} {'max':>7} "
          f"{'step s':>7} {'1st step s':>10} {'job wall s':>10}")
    for r in results:
        print(f"{r['nodes']:>5} {2 * r['nodes']:>5} {r['warm_steps']:>10} {r['tokens_per_s']:>9.0f} "
              f"{r['min_tokens_per_s']:>7.0f} {r['max_tokens_per_s']:>7.0f} {r['step_time']:>7.3f} "
              f"{r['first_step_time']:>10.2f} {r['wall']:>10.1f}")
    summary = {n: statistics.median(r["tokens_per_s"] for r in results if r["nodes"] == n) for n in counts}
    print(f"\n{'nodes':>5} {'runs':>4} {'tokens/s (median of the runs)':>30}")
    for n in counts:
        print(f"{n:>5} {repeats:>4} {summary[n]:>30.0f}")
    if 1 in summary and 2 in summary:
        print(f"ratio 2-node/1-node tokens/s: {summary[2] / summary[1]:.2f}")
    print(f"\nAll testbed nodes share this machine's {os.cpu_count()} cores (2 ranks per node), so a second "
          "node adds no compute: scaling is not expected here. Figures are noisy: other work shares the cores.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
