"""What the TUI shows, as plain data: one `ClusterView` per refresh.

The screen never talks to Slurm, a state file or SSH; it renders a `ClusterView`. A
provider (local or over SSH) builds one per refresh, so the same view can be built on
the login node, shipped as JSON over SSH, or recorded for snapshot tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pitstop import rundir
from pitstop.health_view import NodeHealth
from pitstop.model import Job

LOSS_POINTS = 60  # losses kept per run for the sparkline


@dataclass
class RunProgress:
    """A run directory's progress, as its runtime wrote it."""

    run_dir: str
    step: int = 0
    max_steps: int | None = None
    losses: list[float] = field(default_factory=list)
    loss: float | None = None
    tokens_per_s: float | None = None
    step_time: float | None = None
    eta_s: float | None = None
    restarts: int = 0
    last_checkpoint: int | None = None
    heartbeat_at: float | None = None


@dataclass
class CheckpointRow:
    """One checkpoint of one run, and whether a restart would load it."""

    run_dir: str
    job_id: str
    step: int
    size_bytes: int
    complete: bool
    mtime: float
    restart_target: bool = False


@dataclass
class JobRow:
    job: Job
    progress: RunProgress | None = None


@dataclass
class ClusterView:
    """Everything one refresh read: nodes with health, jobs with progress, checkpoints,
    events. `taken_at` is when Slurm was read; every age on screen is relative to it."""

    taken_at: float
    nodes: list[NodeHealth] = field(default_factory=list)
    jobs: list[JobRow] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    source: str = "local"

    def to_dict(self) -> dict[str, Any]:
        return {"taken_at": self.taken_at, "source": self.source,
                "nodes": [n.to_dict() for n in self.nodes],
                "jobs": [job_row_to_dict(j) for j in self.jobs],
                "checkpoints": [asdict(c) for c in self.checkpoints],
                "events": self.events}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterView":
        return cls(
            taken_at=float(data["taken_at"]), source=str(data.get("source", "local")),
            nodes=[node_from_dict(n) for n in data.get("nodes", [])],
            jobs=[job_row_from_dict(j) for j in data.get("jobs", [])],
            checkpoints=[checkpoint_from_dict(c) for c in data.get("checkpoints", [])],
            events=list(data.get("events", [])))

    def node(self, name: str) -> NodeHealth | None:
        return next((n for n in self.nodes if n.node == name), None)

    def job(self, job_id: str) -> JobRow | None:
        return next((j for j in self.jobs if j.job.job_id == job_id), None)


_FIELDS: dict[type, frozenset[str]] = {}


def _build(cls: type, data: dict[str, Any]) -> Any:
    """`cls` from `data`, ignoring keys this version does not know (a newer login node
    still talks); the field names are looked up once per class, not once per row."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in data.items() if k in names})


def node_from_dict(data: dict[str, Any]) -> NodeHealth:
    return _build(NodeHealth, data)


def job_row_to_dict(row: JobRow) -> dict[str, Any]:
    return {"job": row.job.to_dict(), "progress": asdict(row.progress) if row.progress else None}


def job_row_from_dict(data: dict[str, Any]) -> JobRow:
    progress = data.get("progress")
    return JobRow(_build(Job, data["job"]), _build(RunProgress, progress) if progress else None)


def checkpoint_from_dict(data: dict[str, Any]) -> CheckpointRow:
    return _build(CheckpointRow, data)


def run_dir_of(job: Job) -> Path | None:
    """The run directory of a job: its stdout's directory or its working directory,
    whichever holds a config.yaml (the launcher writes `--output=RUN_DIR/slurm-%j.out`)."""
    candidates = []
    if job.stdout and job.stdout not in {"(null)", "N/A"}:
        candidates.append(Path(job.stdout).parent)
    if job.work_dir and job.work_dir not in {"(null)", "N/A"}:
        candidates.append(Path(job.work_dir))
    for candidate in candidates:
        if (candidate / rundir.CONFIG).is_file():
            return candidate
    return None


def _max_steps(run_dir: Path) -> int | None:
    try:
        cfg = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    trainer = cfg.get("trainer") if isinstance(cfg, dict) else None
    value = trainer.get("max_steps") if isinstance(trainer, dict) else None
    return value if isinstance(value, int) else None


def run_progress(run_dir: Path, job: Job | None = None) -> RunProgress:
    """Step of max, recent losses, tokens/s, ETA, restarts and the restart checkpoint."""
    progress = RunProgress(run_dir=str(run_dir), max_steps=_max_steps(run_dir))
    records = list(rundir.iter_progress(run_dir))
    if records:
        last = records[-1]
        progress.step = int(last.get("step", 0))
        progress.loss = last.get("loss")
        progress.tokens_per_s = last.get("tokens_per_s")
        progress.step_time = last.get("step_time")
        # Restarts in the allocation keep Slurm's count: the run's attempts count them all.
        progress.restarts = max(int(last.get("restart_count", 0)), int(last.get("attempt") or 0))
        progress.losses = [float(r["loss"]) for r in records[-LOSS_POINTS:]
                           if isinstance(r.get("loss"), (int, float))]
    heartbeat = rundir.read_heartbeat(run_dir)
    if heartbeat:
        progress.step = max(progress.step, int(heartbeat.get("step", 0)))
        progress.heartbeat_at = heartbeat.get("time")
        progress.step_time = heartbeat.get("step_time") or progress.step_time
        progress.restarts = max(progress.restarts, int(heartbeat.get("restart_count") or 0),
                                int(heartbeat.get("attempt") or 0))
    if job is not None:
        progress.restarts = max(progress.restarts, job.restart_count)
    if progress.max_steps and progress.step_time:
        progress.eta_s = max(0, progress.max_steps - progress.step) * float(progress.step_time)
    latest = rundir.latest_complete_checkpoint(run_dir)
    progress.last_checkpoint = latest.step if latest else None
    return progress


def checkpoint_rows(run_dir: Path, job_id: str) -> list[CheckpointRow]:
    found = rundir.list_checkpoints(run_dir)
    complete = [c.step for c in found if c.complete]
    target = complete[-1] if complete else None
    return [CheckpointRow(run_dir=str(run_dir), job_id=job_id, step=c.step, size_bytes=c.size_bytes,
                          complete=c.complete, mtime=c.mtime, restart_target=c.step == target)
            for c in found]


def join_runs(jobs: list[Job]) -> tuple[list[JobRow], list[CheckpointRow]]:
    """Each job with its run's progress, and every run's checkpoints (a run shared by
    several jobs, a resubmission, is listed once, under its newest job)."""
    rows, checkpoints, seen = [], [], set()
    for job in sorted(jobs, key=lambda j: _job_sort_key(j.job_id), reverse=True):
        run_dir = run_dir_of(job)
        rows.append(JobRow(job, run_progress(run_dir, job) if run_dir else None))
        if run_dir and run_dir not in seen:
            seen.add(run_dir)
            checkpoints.extend(checkpoint_rows(run_dir, job.job_id))
    rows.sort(key=lambda r: _job_sort_key(r.job.job_id))
    return rows, checkpoints


def _job_sort_key(job_id: str) -> tuple[int, str]:
    head = job_id.split("_")[0].split("+")[0]
    return (int(head) if head.isdigit() else 0, job_id)

