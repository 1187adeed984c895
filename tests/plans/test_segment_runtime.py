"""The training runtime stops by itself at a segment's grace point: `PITSTOP_SEGMENT_END`
minus `PITSTOP_SEGMENT_GRACE`, with a complete checkpoint of the step it reached and exit
0, with no signal from anyone (a job that started late has no time limit to warn it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from pitstop.plans.attach import render_run
from pitstop.rundir import iter_progress, latest_complete_checkpoint

TINY = ["cluster.nodes=1", "trainer.max_steps=100000", "trainer.checkpoint.interval=1000",
        "trainer.step_delay=0.2", "trainer.log_every=1", "model.dim=32", "model.n_layers=1", "model.ffn_dim=64", "model.n_heads=2",
        "model.n_kv_heads=1", "data.seq_len=32", "model.max_seq_len=32", "data.micro_batch_size=2"]


def test_the_run_checkpoints_and_exits_0_at_the_grace_point(tmp_path):
    run_dir = tmp_path / "run"
    render_run("llama3-tiny-seq256-cpu-pretrain", TINY, run_dir, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PITSTOP_TEST"))}
    started = time.time()
    end, grace = started + 30, 10  # start-up takes 4-8 s here: 12-16 s of steps
    env.update({"PITSTOP_SEGMENT_END": f"{end:.0f}", "PITSTOP_SEGMENT_GRACE": str(grace),
                "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-m", "pitstop.recipes.train", str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finished = time.time()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stop requested by the segment's grace point (10s before its end)" in proc.stderr
    assert int(end) - grace <= finished < int(end)
    steps = [r["step"] for r in iter_progress(run_dir)]
    assert steps and max(steps) < 100000
    assert latest_complete_checkpoint(run_dir).step == max(steps)
