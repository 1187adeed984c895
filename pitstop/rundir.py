"""The run directory contract: where a training run keeps what others read.

The training runtime (pitstop.recipes) writes these files; the agent's `progress` source,
the TUI and `pitstop status` read them. Keeping the names and the readers here means no
component imports another to find a run's heartbeat or its checkpoints.

    RUN_DIR/
      config.yaml            the resolved recipe (written by the launcher)
      progress.jsonl         one JSON object per logged step
      heartbeat.json         {"step": int, "time": float, "step_time": float, ...}
      checkpoints/step-000010/   one torch.distributed.checkpoint directory per save
      checkpoints/step-000010/.complete   the atomic completion marker
      tensorboard/           TensorBoard event files
      slurm-<jobid>.out      the job's output
      attempts.jsonl         one line per step the batch script started or saw end
                             ({"event": "start"|"end", "attempt": int, ...}); its
                             presence says the job restarts its own steps (below)
      last-exit              "ATTEMPT REASON STEP": how the runtime last ended on purpose

A job whose run directory holds attempts.jsonl restarts in its allocation: when a step
fails, its batch script starts it again on the allocation's healthy nodes (a spare in
place of a fenced node) and requeues itself only when too few are left. So the agent
ends such a job's step (`scancel --signal=KILL JOB.STEP`) where it would requeue
another job, and the restart costs no queue wait and no new allocation.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pitstop.fsutil import write_atomic


CONFIG = "config.yaml"
PROGRESS = "progress.jsonl"
HEARTBEAT = "heartbeat.json"
CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = ".complete"
TENSORBOARD = "tensorboard"
ATTEMPTS = "attempts.jsonl"
LAST_EXIT = "last-exit"
# The reasons the runtime ends on purpose, in LAST_EXIT: training finished; a stop was
# asked for (SIGUSR1/SIGTERM) and saved; a training plan's segment ended.
EXIT_REASONS = ("finished", "stopped", "segment_end")
# The batch script's line in the job's output as it starts a step: what follows in the
# output belongs to that attempt (the agent's job-log source reads it).
ATTEMPT_LINE = re.compile(r"^pitstop: attempt (\d+) of job (\S+): ")
# The name of a warm start's server steps (`cluster.warm_start`): they are no training
# step, and outlive its restarts (the agent ends the training step, never these).
WARM_STEP_NAME = "pitstop-warm"

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    complete: bool
    size_bytes: int
    mtime: float


def list_checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    """Every checkpoint directory of a run, oldest step first."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _STEP_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        path = Path(entry.path)
        size = 0
        for sub in path.rglob("*"):
            try:
                if sub.is_file():
                    size += sub.stat().st_size
            except FileNotFoundError:
                continue
        try:
            mtime = entry.stat().st_mtime
        except FileNotFoundError:
            continue  # pruned while we listed it (the runtime keeps only the newest few)
        found.append(CheckpointInfo(step=int(match.group(1)), path=path,
                                    complete=(path / COMPLETE_MARKER).exists(),
                                    size_bytes=size, mtime=mtime))
    return sorted(found, key=lambda c: c.step)


def latest_complete_checkpoint(run_dir: Path) -> CheckpointInfo | None:
    """The checkpoint a restart would load: the newest with a completion marker."""
    complete = [c for c in list_checkpoints(run_dir) if c.complete]
    return complete[-1] if complete else None


def read_heartbeat(run_dir: Path) -> dict[str, Any] | None:
    """The runtime's last heartbeat, or None when there is none or it is half-written."""
    try:
        data = json.loads((Path(run_dir) / HEARTBEAT).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def iter_progress(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Each complete line of progress.jsonl; a torn last line is skipped."""
    return _iter_jsonl(Path(run_dir) / PROGRESS)


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    return
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield record
    except FileNotFoundError:
        return


def restarts_in_allocation(run_dir: Path | None) -> bool:
    """Whether this run's batch script restarts its own steps (see the module's doc)."""
    return run_dir is not None and (Path(run_dir) / ATTEMPTS).exists()


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """The batch script's attempt records, in order; a torn last line is skipped."""
    return list(_iter_jsonl(Path(run_dir) / ATTEMPTS))


def current_attempt(run_dir: Path) -> int | None:
    """The number of the step the batch script started last (None: none yet)."""
    starts = [r for r in read_attempts(run_dir) if r.get("event") == "start"]
    return int(starts[-1].get("attempt", 0)) if starts else None


def write_last_exit(run_dir: Path, attempt: int, reason: str, step: int) -> None:
    """Rank 0 says how this attempt ended on purpose, for the batch script to read: a
    step that ends with status 0 but no such line for its attempt did not finish (srun
    can report 0 for a step that Slurm ended on a node failure)."""
    if reason not in EXIT_REASONS:
        raise ValueError(f"unknown exit reason {reason!r}")
    write_atomic(Path(run_dir) / LAST_EXIT, f"{int(attempt)} {reason} {int(step)}\n")


def read_last_exit(run_dir: Path) -> tuple[int, str, int] | None:
    try:
        attempt, reason, step = (Path(run_dir) / LAST_EXIT).read_text().split()
        return int(attempt), reason, int(step)
    except (FileNotFoundError, ValueError):
        return None
