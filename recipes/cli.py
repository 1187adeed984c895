"""`pitstop recipes …`: the recipe collection and the launcher.

Every command takes a recipe name (or a recipe file's path) and Hydra-style overrides
(`key=value`, `+key=value`, `~key`). A recipe error exits 2 with nothing written and
nothing submitted. `list --json` and `launch --json` print one JSON document, so the TUI
can call them over SSH. Composition is imported when a command runs, never at import.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import click

EXIT_RECIPE_ERROR = 2
EXIT_SUBMIT_ERROR = 1

_overrides = click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
_torchrun = click.option(
    "--torchrun", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="torchrun to start on the nodes (default: the one beside this Python).")


def _recipe_errors_exit_2(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a RecipeError as `error: …` on stderr and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pitstop.recipes.errors import RecipeError

        try:
            return command(*args, **kwargs)
        except RecipeError as error:
            click.echo(f"error: {error}", err=True)
            raise SystemExit(EXIT_RECIPE_ERROR) from None

    return wrapper


def _compose(name: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    from pitstop.recipes.compose import compose

    return compose(name, list(overrides))


@click.group(name="recipes", context_settings={"help_option_names": ["-h", "--help"]})
def recipes() -> None:
    """Training recipes: list, show, validate, render and launch."""


@recipes.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for the TUI.")
def list_command(as_json: bool) -> None:
    """The recipes of the collection."""
    from pitstop.recipes.compose import list_recipes

    found = list_recipes()
    if as_json:
        click.echo(json.dumps([info.to_json() for info in found], indent=2))
        return
    width = max([len("NAME")] + [len(info.name) for info in found])
    task_width = max([len("TASK")] + [len(info.task) for info in found])
    click.echo(f"{'NAME':{width}}  {'TASK':{task_width}}  DESCRIPTION")
    for info in found:
        if info.error:
            click.echo(f"{info.name:{width}}  {'?':{task_width}}  does not compose: {info.error}")
            continue
        click.echo(f"{info.name:{width}}  {info.task:{task_width}}  {info.description}")
        click.echo(f"{'':{width}}  {'':{task_width}}  on {info.hardware}")


@recipes.command()
@click.argument("name")
@_overrides
@_recipe_errors_exit_2
def show(name: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved config of NAME.

    OVERRIDES: key=value, +key=value (add), ~key (delete), group=option (model=llama3-70b)."""
    from pitstop.recipes.compose import to_yaml

    click.echo(to_yaml(_compose(name, overrides)), nl=False)


@recipes.command()
@click.argument("name")
@_overrides
@_recipe_errors_exit_2
def validate(name: str, overrides: tuple[str, ...]) -> None:
    """Check NAME; exit 2 listing every problem.

    Exit 0 when NAME with OVERRIDES composes and passes every check."""
    cfg = _compose(name, overrides)
    cluster = cfg["cluster"]
    click.echo(f"{cfg['name']}: ok ({cfg['task']}, {cluster['nodes']} node(s) x "
               f"{cluster['procs_per_node']} process(es), {cfg['trainer']['accelerator']})")


@recipes.command()
@click.argument("name")
@_overrides
@click.option("-o", "--output", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for job.sbatch and config.yaml (the job's run directory).")
@_torchrun
@_recipe_errors_exit_2
def render(name: str, overrides: tuple[str, ...], out_dir: Path, torchrun: Path | None) -> None:
    """Write job.sbatch and config.yaml into DIR.

    DIR becomes the run directory the script pins; nothing is submitted."""
    from pitstop.recipes.launch import render_to

    result = render_to(_compose(name, overrides), out_dir, torchrun=torchrun)
    click.echo(f"wrote {result.script_path}")
    click.echo(f"wrote {result.config_path}")


@recipes.command()
@click.argument("name")
@_overrides
@click.option("--dry-run", is_flag=True, help="Print the script; write and submit nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {job_id, run_dir, ...} as JSON, for the TUI.")
@_torchrun
@_recipe_errors_exit_2
def launch(name: str, overrides: tuple[str, ...], dry_run: bool, as_json: bool,
           torchrun: Path | None) -> None:
    """Submit NAME as a Slurm job.

    Makes the run directory (run.dir, or run.root/NAME-TIMESTAMP), writes config.yaml and
    job.sbatch into it, then submits with sbatch and prints the job id and the run dir."""
    from pitstop.recipes import launch as launcher

    cfg = _compose(name, overrides)
    if not dry_run:
        from pitstop.recipes.sbatch import default_torchrun

        chosen = torchrun or default_torchrun()
        if not chosen.exists():
            click.echo(f"error: no torchrun at {chosen}; install torch in this environment "
                       "or pass --torchrun PATH", err=True)
            raise SystemExit(EXIT_RECIPE_ERROR)
    try:
        result, prepared = launcher.launch(cfg, dry_run=dry_run, torchrun=torchrun)
    except launcher.SubmitError as error:
        click.echo(f"error: {error}", err=True)
        raise SystemExit(EXIT_SUBMIT_ERROR) from None
    for warning in result.warnings:
        click.echo(f"warning: {warning}; a launch would refuse it", err=True)
    if as_json:
        data = result.to_json()
        if dry_run:
            data.update(dry_run=True, script_text=prepared.script_text,
                        config_text=prepared.config_text)
        click.echo(json.dumps(data, indent=2))
        return
    if dry_run:
        click.echo(f"# dry run: nothing written, nothing submitted; run dir would be "
                   f"{result.run_dir}")
        click.echo(prepared.script_text, nl=False)
        return
    resumed = " (resumes from its checkpoints)" if result.resumes else ""
    click.echo(f"submitted job {result.job_id}{resumed}")
    click.echo(f"run dir {result.run_dir}")


@recipes.group()
def data() -> None:
    """Training data: prepare token files for data.source=tokens."""


@data.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the token files into (then set data.path=DIR).")
def prepare(files: tuple[Path, ...], out_dir: Path) -> None:
    """Tokenise FILES into DIR for a recipe's data.path."""
    from pitstop.recipes.data import prepare as prepare_tokens

    try:
        result = prepare_tokens(list(files), out_dir)
    except (OSError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None
    if result is not None:
        click.echo(result if isinstance(result, str) else json.dumps(result, default=str))
    click.echo(f"prepared {len(files)} file(s) into {out_dir}; use data.source=tokens "
               f"data.path={out_dir}")
