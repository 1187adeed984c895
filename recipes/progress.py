"""What a running job tells the world: progress.jsonl, heartbeat.json and TensorBoard.

Only rank 0 writes. The heartbeat is rewritten atomically after every step, because the
agent's `progress` source reads it to tell a hang from a slow step; progress.jsonl gets
one line per logged step for the TUI and `pitstop status`. On resume, lines for steps
after the checkpoint are dropped (they are about to be redone) and TensorBoard purges
the same steps, so both show one value per step.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from pitstop import rundir
from pitstop.fsutil import write_atomic, write_json_atomic


def job_identity() -> dict:
    """The Slurm job this process runs in, with defaults outside Slurm."""
    return {
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        # The step's starts so far (the batch script's; requeues and restarts in the
        # allocation together), so a restart that kept the job id is still told apart.
        "attempt": int(os.environ.get("PITSTOP_ATTEMPT") or 0),
    }


class ProgressWriter:
    def __init__(self, run_dir: Path, resumed_step: int, tensorboard: bool):
        self.run_dir = Path(run_dir)
        self.identity = job_identity()
        self._drop_steps_after(resumed_step)
        self._progress = open(self.run_dir / rundir.PROGRESS, "a", encoding="utf-8")
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / rundir.TENSORBOARD),
                                              purge_step=resumed_step + 1)

    def _drop_steps_after(self, step: int) -> None:
        path = self.run_dir / rundir.PROGRESS
        if not path.exists():
            return
        kept = [record for record in rundir.iter_progress(self.run_dir) if record.get("step", 0) <= step]
        write_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))

    def log(self, step: int, loss: float, lr: float, grad_norm: float, tokens_per_s: float,
            step_time: float) -> None:
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": tokens_per_s, "step_time": step_time,
                  "restart_count": self.identity["restart_count"], "attempt": self.identity["attempt"],
                  "time": time.time()}
        self._progress.write(json.dumps(record) + "\n")
        self._progress.flush()
        if self._tensorboard is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time"):
                self._tensorboard.add_scalar(f"train/{key}", record[key], step)
            self._tensorboard.flush()

    def heartbeat(self, step: int, step_time: float) -> None:
        write_json_atomic(self.run_dir / rundir.HEARTBEAT, {
            "step": step, "time": time.time(), "step_time": step_time, "pid": os.getpid(),
            **self.identity,
        })

    def close(self) -> None:
        self._progress.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
