"""`pitstop demo`: the whole story on one machine — a training run survives a dying GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import click


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
@click.option("--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="A recipe override, e.g. trainer.step_delay=0.5 (repeatable).")
@click.option("--no-tui", is_flag=True, help="Print the timeline even on a terminal.")
@click.option("--keep", is_flag=True, help="Leave the testbed running afterwards.")
@click.option("--timeout", "timeout_s", type=float, default=1800.0, show_default=True)
def demo(directory: Path, steps: int, fault_after: int, faults: int, every_s: float,
         overrides: tuple[str, ...], no_tui: bool, keep: bool, timeout_s: float) -> None:
    """Bring up a four-node testbed with agents, train on two nodes, break one, watch it heal."""
    from pitstop.demo.runner import Demo, DemoError, DemoOptions
    from pitstop.testbed.procs import TestbedError

    if not no_tui and sys.stdout.isatty():
        click.echo("(the TUI view of the demo is not built yet — issue #6; printing the timeline)", err=True)
    options = DemoOptions(directory=directory, steps=steps, fault_after_step=fault_after, faults=faults,
                          every_s=every_s, overrides=list(overrides), timeout_s=timeout_s, keep=keep)
    run = Demo(options, say=lambda line: click.echo(line))
    try:
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
