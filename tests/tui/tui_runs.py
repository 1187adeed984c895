"""A run directory written the way the training runtime writes one, and a Slurm job
whose output lands in it: the TUI's join of queue and progress, without training."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pitstop import rundir

LOSSES = [4.0, 3.5, 3.1, 2.8, 2.6]


def write_run(run_dir: Path, max_steps: int = 100, step_time: float = 0.5) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / rundir.CONFIG).write_text(f"name: fake\ntrainer:\n  max_steps: {max_steps}\n")
    now = time.time()
    with open(run_dir / rundir.PROGRESS, "w") as fh:
        for step, loss in enumerate(LOSSES, start=1):
            fh.write(json.dumps({"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 1.0,
                                 "tokens_per_s": 1234.5, "step_time": step_time,
                                 "restart_count": 0, "time": now}) + "\n")
    (run_dir / rundir.HEARTBEAT).write_text(json.dumps(
        {"step": len(LOSSES), "time": now, "step_time": step_time, "restart_count": 0}))
    for step, complete in ((2, True), (4, False)):
        path = rundir.checkpoint_dir(run_dir, step)
        path.mkdir(parents=True, exist_ok=True)
        (path / "shard.bin").write_bytes(b"x" * 1000)
        if complete:
            (path / rundir.COMPLETE_MARKER).write_text("")
    return run_dir


def submit_sleeper(slurm, run_dir: Path, seconds: int = 300, lines: int = 3) -> str:
    """A job that prints `lines` lines into RUN_DIR/slurm-<id>.out, then sleeps."""
    script = run_dir / "job.sbatch"
    script.write_text("#!/bin/bash\n" + "".join(f"echo line {i}\n" for i in range(lines)) +
                      f"sleep {seconds}\n")
    script.chmod(0o755)
    return slurm.submit(script, args=["--requeue", "-N1", f"--output={run_dir}/slurm-%j.out",
                                      f"--chdir={run_dir}", "--job-name=fake-run"], cwd=run_dir)
