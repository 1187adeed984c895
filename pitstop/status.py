"""`pitstop status`: the cluster health table, Slurm's view merged with every agent's."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from pitstop.health_view import cluster_health, load_states
from pitstop.slurm import Slurm, SlurmError

DEFAULT_STATE_DIR = "/var/lib/pitstop"


def state_dir_option(func):
    return click.option("--state-dir", type=click.Path(path_type=Path),
                        default=lambda: os.environ.get("PITSTOP_STATE_DIR", DEFAULT_STATE_DIR),
                        show_default=f"$PITSTOP_STATE_DIR or {DEFAULT_STATE_DIR}",
                        help="Where the agents write their state files (a shared path on real clusters).")(func)


@click.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object: nodes and jobs.")
def status(state_dir: Path, as_json: bool) -> None:
    """Cluster health: every node's Slurm state and pitstop health, in one table."""
    try:
        snapshot = Slurm().snapshot()
    except SlurmError as exc:
        raise click.ClickException(str(exc)) from None
    rows = cluster_health(snapshot, load_states(state_dir), time.time())
    if as_json:
        click.echo(json.dumps({"taken_at": snapshot.taken_at, "state_dir": str(state_dir),
                               "nodes": [r.to_dict() for r in rows],
                               "jobs": [j.to_dict() for j in snapshot.jobs]}, indent=2))
        return
    header = f"{'NODE':<12} {'SLURM':<20} {'PITSTOP':<16} {'ACCEL':<7} {'JOBS':<10} {'WORST FINDING':<28} REASON"
    click.echo(header)
    for row in rows:
        health = row.health + (f"({row.fence_class})" if row.fence_class else "")
        if row.health != "UNKNOWN" and row.agent_stale:
            health += "?"
        accel = (f"{row.accelerators_healthy}/{row.accelerators_total}"
                 if row.accelerators_healthy is not None else f"-/{row.accelerators_total}")
        worst = ""
        if row.worst_finding:
            f = row.worst_finding
            worst = " ".join(p for p in (f.get("signal"), f.get("code"), f.get("device")) if p)
        click.echo(f"{row.node:<12} {row.slurm_state:<20} {health:<16} {accel:<7} "
                   f"{','.join(row.jobs) or '-':<10} {worst[:28] or '-':<28} {row.reason or '-'}")
    unknown = [r.node for r in rows if r.health == "UNKNOWN"]
    if unknown:
        click.echo(f"\nno agent state for: {','.join(unknown)} (in {state_dir})", err=True)
