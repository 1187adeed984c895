"""Goodput under a fault campaign: the ETTR the testbed measures beside Meta's model.

Runs `pitstop demo`'s campaign (a fault every `--every` seconds for `--minutes`: XID 79,
XID 48, an NCCL timeout, a stalled rank, a dead slurmd, in turn) and prints the measured
ETTR — productive training time over wall time — with the time lost by cause, beside the
closed form of Meta's "Revisiting Reliability in Large-Scale Machine Learning Research
Clusters":

    E[ETTR] ≈ (1 − N·r_f·(u0 + Δt/2)) / (1 + w/Δt)

for the same N·r_f (faults per second over the job's nodes), restart cost u0 (a fault to
the first step after it), checkpoint interval Δt (seconds) and checkpoint blocking time w,
then the same formula with the measured u0 and w at 16,384 GPUs (2,048 nodes of 8) and
Meta's 6.5 failures per 1,000 node-days, at this Δt and at the best Δt = sqrt(2w / N·r_f).
It also splits a restart (median over the campaign's restarts) into its phases: detection,
the agent's actions, the old job stopping, the requeued job pending (Slurm holds it for
AuthInfo's cred_expire), srun and torchrun, and the runtime's own start-up phases.

    .venv/bin/python bench/goodput.py [--minutes 10] [--every 60]
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from pitstop.demo.runner import Demo, DemoOptions
from pitstop.rundir import ATTEMPT_LINE


def meta_ettr(n_rf: float, u0: float, dt: float, w: float) -> float:
    return (1 - n_rf * (u0 + dt / 2)) / (1 + w / dt)


def start_lines(run_dir: Path) -> dict[int, dict[str, float]]:
    """Each attempt's start-up phases in seconds, from the runtime's own start line
    (`training from step N …; start-up T s: python and imports A s, …`) after the batch
    script's line for that attempt."""
    starts: dict[int, dict[str, float]] = {}
    for out in sorted(run_dir.glob("slurm-*.out")):
        attempt = None
        for line in out.read_text(errors="replace").splitlines():
            marker = ATTEMPT_LINE.match(line)
            if marker is not None:
                attempt = int(marker.group(1))
            elif attempt is not None and "training from step" in line and "start-up" in line:
                phases = line.split("start-up", 1)[1].split(":", 1)[1]
                starts.setdefault(attempt, {name.strip(): float(seconds) for name, seconds in
                                            re.findall(r"([a-z ]+?) ([0-9.]+) s", phases)})
    return starts


def requeued_at(slurmctld_log: Path, job_id: str) -> list[float]:
    """When slurmctld put the job back in the queue (its old allocation released)."""
    times = []
    for line in slurmctld_log.read_text(errors="replace").splitlines():
        if f"Requeuing JobId={job_id}" in line:
            stamp = line[1:line.index("]")]
            times.append(datetime.fromisoformat(stamp).timestamp())
    return times


def restart_phases(demo: Demo) -> dict[str, list[float]]:
    """Where each restart's seconds went, from the fault to the first step after it."""
    phases: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        phases.setdefault(name, []).append(max(0.0, seconds))

    starts = start_lines(demo.run_dir)
    released = requeued_at(demo.testbed.layout.log_dir / "slurmctld.log", demo.job_id)
    by_number = {a.number: a for a in demo.attempts}
    for attempt in demo.attempts:
        before = by_number.get(attempt.number - 1)
        first = min((s.ended_at - s.step_time for s in demo.steps if s.attempt == attempt.number), default=None)
        fault = next((f for f in reversed(demo.faults) if before and before.requeued_at
                      and f.at <= before.requeued_at), None)
        if not attempt.number or before is None or fault is None or first is None or not attempt.started_at:
            continue
        if fault.detected_at is not None:
            add("detect", fault.detected_at - fault.at)
            add("agent acts, the step ends", before.requeued_at - fault.detected_at)
        requeued = attempt.restart_count != before.restart_count
        gone = next((t for t in released if t >= before.requeued_at - 1), None) if requeued else None
        if gone is not None:
            add("old job stops (requeue)", gone - before.requeued_at)
            add("pending (requeue)", attempt.started_at - gone)
        elif not requeued:
            add("next step placed (in the allocation)", attempt.started_at - before.requeued_at)
        start = starts.get(attempt.number, {})
        add("launch (srun, torchrun)", first - attempt.started_at - sum(start.values()))
        for name, seconds in start.items():
            add(name, seconds)
    return phases


def blocking_seconds(run_dir: Path) -> list[float]:
    """The runtime's own report of how long each save blocked training (rank 0's line as
    each checkpoint completes: an attempt that was ended never prints its totals)."""
    found = []
    for out in run_dir.glob("slurm-*.out"):
        for line in out.read_text(errors="replace").splitlines():
            match = re.search(r"checkpoint step \d+ complete \([0-9.]+s; blocked training ([0-9.]+)s\)", line)
            if match:
                found.append(float(match.group(1)))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=60.0)
    # Meta's best interval, sqrt(2w / N·r_f), is 1.4 s here (w 0.017 s, a fault a minute):
    # two steps of about 0.85 s.
    parser.add_argument("--interval", type=int, default=2, help="checkpoint interval in steps")
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--keep", action="store_true",
                        help="keep the run directory and the testbed's logs (by default only a failed run's)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="pitstop-goodput-", dir="/tmp"))
    faults = max(1, int(args.minutes * 60 / args.every))
    options = DemoOptions(directory=directory, steps=100000, fault_after_step=args.interval + 3,
                          faults=faults, every_s=args.every, duration_s=args.minutes * 60,
                          overrides=[f"trainer.checkpoint.interval={args.interval}",
                                     # a fault a minute for the whole campaign: restarts are the point
                                     f"cluster.max_restarts={faults + 10}", *args.override],
                          timeout_s=args.minutes * 60 + 600)
    demo = Demo(options, say=lambda line: print(line, flush=True))
    try:
        summary = demo.run()
        run_dir = demo.run_dir
    finally:
        demo.close()
    steps = [s.step_time for s in demo.steps]
    step_time = statistics.median(steps) if steps else float("nan")
    dt = args.interval * step_time
    blocked = blocking_seconds(run_dir)
    w = statistics.median(blocked) if blocked else 0.0
    u0 = statistics.median(summary.time_to_resume_s) if summary.time_to_resume_s else float("nan")
    wall = summary.wall_s
    n_rf = summary.faults / wall if wall else 0.0
    print("\ngoodput under a fault campaign")
    print(f"  campaign               {summary.faults} faults in {wall:.0f}s on a 2-node job "
          f"(N·r_f = {n_rf:.4f}/s), {summary.detected} detected, healthy nodes fenced: "
          f"{', '.join(summary.healthy_fenced) or 'none'}")
    print(f"  measured ETTR          {summary.ettr:.3f}  (target >= 0.85)")
    for cause, seconds in summary.lost_s.items():
        print(f"    lost to {cause:<16} {seconds:7.1f}s  ({seconds / wall:.1%} of wall)")
    phases = restart_phases(demo)
    if phases:
        print(f"  a restart's time, median over {max(len(v) for v in phases.values())} restarts "
              f"(fault to the first step after it):")
        for name, values in phases.items():
            print(f"    {name:<28} {statistics.median(values):6.2f}s")
    print(f"  inputs                 u0 = {u0:.1f}s (fault to the next step), Δt = {dt:.1f}s "
          f"({args.interval} steps of {step_time:.2f}s), w = {w:.3f}s (median save blocking)")
    print(f"  Meta's model, same N·r_f   E[ETTR] = {meta_ettr(n_rf, u0, dt, w):.3f}")
    n_rf_16k = 2048 * 6.5 / 1000 / 86400
    best_dt = math.sqrt(2 * w / n_rf_16k) if w > 0 else float("nan")
    print(f"  Meta's model at 16,384 GPUs (6.5 failures / 1,000 node-days, N·r_f = {n_rf_16k:.2e}/s):")
    print(f"    at Δt = {dt:.1f}s         E[ETTR] = {meta_ettr(n_rf_16k, u0, dt, w):.4f}  (target >= 0.97)")
    if w > 0:
        print(f"    at best Δt = {best_dt:.0f}s   E[ETTR] = {meta_ettr(n_rf_16k, u0, best_dt, w):.4f}")
    if demo.final_state in ("COMPLETED", "RUNNING", "CANCELLED") and not args.keep:  # ran its course
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"  the job ended {demo.final_state}: its run directory and the testbed's logs are kept "
              f"in {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
