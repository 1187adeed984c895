"""The launcher: a resolved config in, a pinned run directory and a submitted job out.

The run directory is made first and holds everything the job needs: `config.yaml` (the
resolved recipe, the runtime's only input) and `job.sbatch`, both written atomically.
Then the script is submitted through `pitstop.slurm` (the only code that runs Slurm), so
a requeue, a resubmission by hand or the TUI all start from the same two files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pitstop.fsutil import write_atomic
from pitstop.recipes.compose import to_yaml
from pitstop.recipes.errors import RecipeError
from pitstop.recipes.sbatch import SbatchScript
from pitstop.rundir import CONFIG, list_checkpoints

SCRIPT = "job.sbatch"

# (script path, working directory) -> job id
Submit = Callable[[Path, Path], str]


class SubmitError(Exception):
    """sbatch refused the job; the run directory and its two files are kept."""


@dataclass(frozen=True)
class PreparedRun:
    """A run ready to write and submit: the config as the job will read it, its script."""

    config: dict[str, Any]
    script: SbatchScript
    run_dir: Path

    @property
    def script_text(self) -> str:
        return self.script.render()

    @property
    def config_text(self) -> str:
        return to_yaml(self.config)


@dataclass(frozen=True)
class LaunchResult:
    job_id: str | None          # None for a dry run
    run_dir: Path
    script_path: Path
    config_path: Path
    resumes: bool               # the run directory already held checkpoints
    warnings: tuple[str, ...] = ()   # a dry run's missing inputs, which a launch refuses

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "run_dir": str(self.run_dir),
                "script": str(self.script_path), "config": str(self.config_path),
                "resumes": self.resumes, "warnings": list(self.warnings)}


def missing_inputs(cfg: dict[str, Any], chdir: Path) -> list[str]:
    """The input directories the job would not find (model.init_from, data.path for
    tokens), seen from the launch directory, which is the job's working directory too."""
    wanted = []
    if cfg["model"]["init_from"]:
        wanted.append(("model.init_from", cfg["model"]["init_from"],
                       "a Hugging Face-format directory (config.json + safetensors)"))
    if cfg["data"]["source"] == "tokens" and cfg["data"]["path"]:
        wanted.append(("data.path", cfg["data"]["path"],
                       "a directory written by `pitstop recipes data prepare FILES -o DIR`"))
    problems = []
    for key, value, what in wanted:
        path = Path(chdir) / Path(value).expanduser()
        if not path.is_dir():
            problems.append(f"{key}={value}: no such directory ({path}); expected {what}")
    return problems


def planned_run_dir(cfg: dict[str, Any], cwd: Path | None = None,
                    now: datetime | None = None) -> Path:
    """`run.dir` when set, else `<run.root>/<name>-<UTC timestamp>`; absolute."""
    base = Path(cwd or Path.cwd()).absolute()
    if cfg["run"]["dir"]:
        return base / Path(cfg["run"]["dir"]).expanduser()
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return base / Path(cfg["run"]["root"]).expanduser() / f"{cfg['name']}-{stamp}"


def prepare(cfg: dict[str, Any], run_dir: Path, chdir: Path | None = None,
            torchrun: Path | None = None) -> PreparedRun:
    """The config pinned to `run_dir` (absolute run.dir and run.root) and its script."""
    chdir = Path(chdir or Path.cwd()).absolute()
    run_dir = Path(run_dir).absolute()
    pinned = copy.deepcopy(cfg)
    pinned["run"]["dir"] = str(run_dir)
    pinned["run"]["root"] = str(chdir / Path(cfg["run"]["root"]).expanduser())
    script = SbatchScript.from_config(pinned, run_dir, chdir=chdir, torchrun=torchrun)
    return PreparedRun(config=pinned, script=script, run_dir=run_dir)


def write_run_files(prepared: PreparedRun) -> tuple[Path, Path]:
    """Write config.yaml then job.sbatch into the (existing) run directory."""
    config_path = prepared.run_dir / CONFIG
    script_path = prepared.run_dir / SCRIPT
    write_atomic(config_path, prepared.config_text)
    write_atomic(script_path, prepared.script_text, mode=0o755)
    return config_path, script_path


def _make_run_dir(planned: Path, pinned_by_user: bool) -> Path:
    """Create the run directory; a generated name that exists gets a `-2`, `-3`… suffix."""
    if pinned_by_user:
        planned.mkdir(parents=True, exist_ok=True)
        return planned
    planned.parent.mkdir(parents=True, exist_ok=True)
    candidate, suffix = planned, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = planned.with_name(f"{planned.name}-{suffix}")


def render_to(cfg: dict[str, Any], out_dir: Path, chdir: Path | None = None,
              torchrun: Path | None = None) -> LaunchResult:
    """Write DIR/config.yaml and DIR/job.sbatch for a run in DIR; submit nothing."""
    out_dir = Path(out_dir).absolute()
    prepared = prepare(cfg, out_dir, chdir=chdir, torchrun=torchrun)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path, script_path = write_run_files(prepared)
    return LaunchResult(None, out_dir, script_path, config_path,
                        resumes=bool(list_checkpoints(out_dir)))


def _slurm_submit(script_path: Path, cwd: Path) -> str:
    from pitstop.slurm import Slurm, SlurmError

    try:
        return Slurm().submit(script_path, cwd=cwd)
    except SlurmError as error:
        detail = (getattr(error, "stderr", "") or "").strip() or str(error)
        raise SubmitError(f"sbatch failed (exit {getattr(error, 'returncode', '?')}): "
                          f"{detail}") from error


def launch(cfg: dict[str, Any], dry_run: bool = False, chdir: Path | None = None,
           torchrun: Path | None = None, submit: Submit | None = None,
           now: datetime | None = None) -> tuple[LaunchResult, PreparedRun]:
    """Make the run directory, write its files, submit; a dry run writes and submits nothing.

    Raises RecipeError (nothing written) when an input directory is missing, and
    SubmitError when sbatch refuses the job (the run directory is kept).
    """
    chdir = Path(chdir or Path.cwd()).absolute()
    planned = planned_run_dir(cfg, cwd=chdir, now=now)
    missing = missing_inputs(cfg, chdir)
    if dry_run:
        prepared = prepare(cfg, planned, chdir=chdir, torchrun=torchrun)
        return LaunchResult(None, planned, planned / SCRIPT, planned / CONFIG,
                            resumes=bool(list_checkpoints(planned)),
                            warnings=tuple(missing)), prepared
    if missing:
        raise RecipeError(missing, recipe=cfg["name"])
    # Check the script renders (paths sbatch can take) before anything is created.
    prepare(cfg, planned, chdir=chdir, torchrun=torchrun)
    run_dir = _make_run_dir(planned, pinned_by_user=bool(cfg["run"]["dir"]))
    prepared = prepare(cfg, run_dir, chdir=chdir, torchrun=torchrun)
    resumes = bool(list_checkpoints(run_dir))
    config_path, script_path = write_run_files(prepared)
    job_id = (submit or _slurm_submit)(script_path, chdir)
    return LaunchResult(job_id, run_dir, script_path, config_path, resumes), prepared
