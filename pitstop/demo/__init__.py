"""`pitstop demo`: the whole story on one machine — a training run survives a dying GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _kinds(_ctx, _param, value: str) -> list[str]:
    from pitstop.demo.runner import FAULT_KINDS

    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'}: choose from {', '.join(FAULT_KINDS)}")
    return kinds


@click.command(name="demo")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("/tmp/pitstop-demo"),
              show_default=True, help="The demo's own testbed directory.")
@click.option("--steps", type=click.IntRange(20, 100000), default=60, show_default=True,
              help="Training steps of the run.")
@click.option("--fault-after", type=click.IntRange(1), default=15, show_default=True,
              help="Inject the first fault once the run has passed this step.")
@click.option("--faults", type=click.IntRange(1, 100), default=1, show_default=True,
              help="How many faults; more than one runs a campaign of mixed faults "
                   "(XID 79, XID 48, an NCCL timeout, a stalled rank, a dead slurmd).")
@click.option("--every", "every_s", type=float, default=60.0, show_default=True,
              help="Seconds between the faults of a campaign.")
@click.option("--kinds", default="xid79,xid48,nccl,stall,slurmd", show_default=True, callback=_kinds,
              help="The campaign's faults, comma-separated, injected in turn.")
@click.option("--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="A recipe override, e.g. trainer.step_delay=0.5 (repeatable).")
@click.option("--no-tui", is_flag=True, help="Print the timeline even on a terminal.")
@click.option("--keep", is_flag=True, help="Leave the testbed running afterwards.")
@click.option("--timeout", "timeout_s", type=float, default=1800.0, show_default=True)
def demo(directory: Path, steps: int, fault_after: int, faults: int, every_s: float, kinds: list[str],
         overrides: tuple[str, ...], no_tui: bool, keep: bool, timeout_s: float) -> None:
    """Bring up a four-node testbed with agents, train on two nodes, break one, watch it heal.

    On a terminal the story plays in the TUI (`:nodes`, `:events`, `:jobs`; q quits);
    the timeline and the summary are printed when it closes."""
    from pitstop.demo.runner import Demo, DemoError, DemoOptions
    from pitstop.testbed.procs import TestbedError

    options = DemoOptions(directory=directory, steps=steps, fault_after_step=fault_after, faults=faults,
                          every_s=every_s, overrides=list(overrides), timeout_s=timeout_s, keep=keep,
                          kinds=kinds)
    run = Demo(options, say=lambda line: click.echo(line))
    try:
        if not no_tui and sys.stdout.isatty() and sys.stdin.isatty():
            summary = _on_screen(run)
        else:
            summary = run.run()
    except (DemoError, TestbedError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        run.close()
    if summary.detected < summary.faults or summary.healthy_fenced:
        sys.exit(1)


def _on_screen(run):
    """The testbed comes up on the plain terminal, then the story plays in the TUI."""
    from pitstop.demo.screen import run_on_screen

    run.start()
    lines, summary, failure = run_on_screen(run)
    for line in lines:
        click.echo(line)
    if failure is not None:
        raise failure
    if summary is None:
        raise click.ClickException("the TUI was closed before the run ended")
    return summary
