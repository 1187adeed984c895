"""`python -m pitstop.tui.remote …`: what the SSH provider runs on the login node.

Hidden (not a `pitstop` command): the far side of `SshProvider`. Each sub-command runs the
local provider there and prints one JSON document, so the same code builds the view on
both sides; `watch` stays up for the session and answers each refresh with the rows that
changed (pitstop.tui.wire). Errors go to stderr as one line, `error: …`, with exit
status 1.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from pitstop.tui import wire
from pitstop.tui.providers import LocalProvider, ProviderError, default_state_dir


@click.group()
@click.option("--state-dir", default=default_state_dir, help="The agents' state directory.")
@click.pass_context
def remote(ctx: click.Context, state_dir: str) -> None:
    """The SSH provider's far side (one JSON document per command)."""
    ctx.obj = LocalProvider(state_dir=state_dir)


def _answer(value) -> None:
    click.echo(json.dumps(value))


@remote.command()
@click.pass_obj
def view(provider: LocalProvider) -> None:
    """One row a line (pitstop.tui.wire), so the far side parses only the rows that changed."""
    click.echo(wire.encode(provider.fetch()), nl=False)


@remote.command()
@click.pass_obj
def watch(provider: LocalProvider) -> None:
    """A view for each line read from stdin, each a delta against the one before and
    ended by a line `.`, until stdin closes: one process for a whole session instead of
    one per refresh, and a refresh carries only the rows that changed."""
    encoder = wire.DeltaEncoder()
    for _ in sys.stdin:
        try:
            answer = encoder.encode(provider.fetch())
        except ProviderError as exc:
            answer = wire.error_answer(str(exc))
        except Exception as exc:  # a surprise this time: said, and the stream goes on
            answer = wire.error_answer(f"{type(exc).__name__}: {exc}")
        sys.stdout.write(answer + wire.END)
        sys.stdout.flush()


@remote.command()
@click.argument("node")
@click.option("--reason", required=True)
@click.pass_obj
def drain(provider: LocalProvider, node: str, reason: str) -> None:
    provider.drain(node, reason)
    _answer({"ok": True})


@remote.command()
@click.argument("node")
@click.pass_obj
def resume(provider: LocalProvider, node: str) -> None:
    provider.resume(node)
    _answer({"ok": True})


@remote.command()
@click.argument("job_id")
@click.pass_obj
def requeue(provider: LocalProvider, job_id: str) -> None:
    provider.requeue(job_id)
    _answer({"ok": True})


@remote.command()
@click.argument("job_id")
@click.pass_obj
def cancel(provider: LocalProvider, job_id: str) -> None:
    provider.cancel(job_id)
    _answer({"ok": True})


@remote.command()
@click.pass_obj
def recipes(provider: LocalProvider) -> None:
    _answer(provider.recipes())


@remote.command()
@click.argument("node")
@click.pass_obj
def devices(provider: LocalProvider, node: str) -> None:
    """One node's per-device readings from its state file (null: its agent publishes none)."""
    _answer(provider.devices(node))


@remote.command()
@click.option("--width", type=int, default=72)
@click.pass_obj
def plans(provider: LocalProvider, width: int) -> None:
    """Every training plan's picture (pitstop.plans.picture), drawn here as on the login node."""
    _answer(provider.plans(width))


@remote.command()
@click.argument("recipe")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def preview(provider: LocalProvider, recipe: str, overrides: tuple[str, ...]) -> None:
    _answer(provider.preview(recipe, list(overrides)).to_dict())


@remote.command()
@click.argument("recipe")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def launch(provider: LocalProvider, recipe: str, overrides: tuple[str, ...]) -> None:
    _answer(asdict(provider.launch(recipe, list(overrides))))


def main() -> None:
    try:
        remote.main(prog_name="pitstop.tui.remote", standalone_mode=False)
    except ProviderError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
