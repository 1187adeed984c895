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
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


CONFIG = "config.yaml"
PROGRESS = "progress.jsonl"
HEARTBEAT = "heartbeat.json"
CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = ".complete"
TENSORBOARD = "tensorboard"

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
    try:
        with open(Path(run_dir) / PROGRESS, encoding="utf-8", errors="replace") as fh:
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
