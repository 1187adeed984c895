"""The `pitstop` command: one click group that mounts every component's commands.

Components are imported only when their command runs, so `pitstop --version` and the
hooks stay fast, and a component that fails to import breaks only its own commands.
"""

from __future__ import annotations

import importlib
import sys

import click

from pitstop import __version__

# command name -> ("module:attribute", short help)
COMPONENTS: dict[str, tuple[str, str]] = {
    "testbed": ("pitstop.testbed.cli:testbed", "A real local Slurm cluster on this machine."),
    "agent": ("pitstop.daemon.cli:agent", "The node agent: watch, decide, fence."),
    "status": ("pitstop.status:status", "Cluster health: Slurm's view merged with every agent's."),
    "recipes": ("pitstop.recipes.cli:recipes", "Training recipes: list, show, render, launch."),
    "check": ("pitstop.hooks.cli:check", "Health checks on this node or across nodes."),
    "hooks": ("pitstop.hooks.cli:hooks", "Slurm Prolog/Epilog/HealthCheckProgram entry points."),
    "tui": ("pitstop.tui.cli:tui", "The terminal UI, locally or over SSH."),
    "demo": ("pitstop.demo:demo", "The whole story on one machine: a run survives a dying GPU."),
    "plans": ("pitstop.plans.cli:plans", "Training plans: find capacity, book reservations, carry a run."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMPONENTS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMPONENTS.get(name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(COMPONENTS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pitstop")
def cli() -> None:
    """pitstop keeps long training runs alive on Slurm clusters."""


def not_built(name: str, issue: int, what: str) -> click.Command:
    """A command whose component has not landed yet: it says so and exits 2."""

    @click.command(name=name, context_settings={"ignore_unknown_options": True,
                                                 "allow_extra_args": True},
                   help=f"{what} (not built yet: issue #{issue}).")
    @click.pass_context
    def command(ctx: click.Context) -> None:
        click.echo(f"pitstop {name}: not built yet (issue #{issue}: {what})", err=True)
        ctx.exit(2)

    return command


def main() -> None:
    try:
        cli.main(prog_name="pitstop")
    except KeyboardInterrupt:
        sys.exit(130)
