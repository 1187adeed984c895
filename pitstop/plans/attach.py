"""`plans attach`: pin one run directory for a recipe and give every segment its job.

The recipe is rendered by `pitstop recipes render` in a child process (the recipes
component is not imported by the core), into a run directory that every segment's job
shares, so each one resumes from the checkpoint the previous one left.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from pitstop.plans.jobs import SCRIPT, submit_missing
from pitstop.plans.status import ACTIVE, BETWEEN, SCHEDULED, plan_state
from pitstop.plans.store import Plan, PlanError, PlanRun, PlanStore
from pitstop.slurm import Slurm

DEFAULT_GRACE_S = 120.0


def render_run(recipe: str, overrides: list[str], run_dir: Path, chdir: Path) -> dict:
    """Write run_dir/config.yaml and job.sbatch with `pitstop recipes render`; the config."""
    proc = subprocess.run([sys.executable, "-m", "pitstop", "recipes", "render", recipe, *overrides,
                           "-o", str(run_dir)], capture_output=True, text=True, cwd=chdir, timeout=120)
    if proc.returncode != 0:
        raise PlanError(f"pitstop recipes render {recipe}: {(proc.stderr or proc.stdout).strip()}")
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def attach(slurm: Slurm, store: PlanStore, name: str, recipe: str, overrides: list[str],
           run_dir: Path | None = None, chdir: Path | None = None, grace_s: float = DEFAULT_GRACE_S,
           now: float | None = None) -> tuple[Plan, list[str]]:
    now = time.time() if now is None else now
    plan = store.load(name)
    if plan.run is not None:
        raise PlanError(f"plan {name} already carries {plan.run.recipe} in {plan.run.run_dir}")
    state = plan_state(plan, now)
    if state.state not in {SCHEDULED, ACTIVE, BETWEEN}:
        raise PlanError(f"plan {name} is {state.label}: nothing left to attach a run to")
    shortest = min(s.duration for s in plan.segments if s.end > now)
    if grace_s <= 0 or grace_s + 60 > shortest:
        raise PlanError(f"--grace {grace_s:g}s: must be positive and leave at least a minute of "
                        f"the shortest segment ({shortest:.0f}s)")
    chdir = Path(chdir or Path.cwd()).absolute()
    run_dir = Path(run_dir or chdir / "runs" / f"plan-{name}").absolute()
    cfg = render_run(recipe, overrides, run_dir, chdir)
    wanted = cfg["cluster"]["nodes"]
    fewest = min(s.nodes for s in plan.segments)
    if wanted > fewest:
        raise PlanError(f"{recipe}: cluster.nodes={wanted}, but plan {name} reserves {fewest} node(s)")
    if not (run_dir / SCRIPT).exists():
        raise PlanError(f"{run_dir / SCRIPT}: not written by pitstop recipes render")
    plan.run = PlanRun(recipe=recipe, overrides=list(overrides), run_dir=str(run_dir),
                       chdir=str(chdir), grace_s=float(grace_s))
    plan.note(f"attached {recipe} in {run_dir}", now)
    store.save(plan)
    return plan, submit_missing(slurm, store, plan, now)
