"""Waiting inside a Pilot session on what the screen shows, with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Callable, TypeVar

T = TypeVar("T")


async def wait_for(pilot, predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.05)


def row_text(app, view: str, key: str) -> str | None:
    """What the row `key` of `view` shows, as one line of text; None when not on screen."""
    table = app.main.table(view)
    if not table.shows(key):
        return None
    return "  ".join(cell.plain for cell in table.get_row(key))


def shown(renderable) -> str:
    """A Rich renderable (a widget's content) as the plain text a terminal would show."""
    from rich.console import Console

    console = Console(width=220, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def message(app) -> str:
    return str(app.main.query_one("#message").render())


def status(app) -> str:
    return str(app.main.query_one("#status").render())


async def select(pilot, view: str, key: str) -> None:
    """Move the cursor to row `key` with the arrow keys, as a person would."""
    table = pilot.app.main.table(view)
    await wait_for(pilot, lambda: table.shows(key), what=f"row {key} in {view}")
    await pilot.press("home")
    for _ in range(table.row_count):
        if table.selected_key() == key:
            return
        await pilot.press("down")
    raise AssertionError(f"could not reach row {key} in {view}")


async def goto(pilot, view: str) -> None:
    await pilot.press("colon", *view, "enter")
    await wait_for(pilot, lambda: pilot.app.main.view_name == view, 5, what=f":{view}")


def pilot_test(scenario):
    """Run an async test body on its own event loop (no pytest-asyncio here)."""

    @functools.wraps(scenario)
    def run(*args, **kwargs):
        asyncio.run(scenario(*args, **kwargs))

    return run


@contextlib.asynccontextmanager
async def started(provider, size: tuple[int, int] = (140, 32)):
    """The app on `provider` (no polling of its own), after its first refresh."""
    from pitstop.tui.app import PitstopApp

    app = PitstopApp(provider, interval=3600)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: app.refreshes >= 1, what="the first refresh")
        yield app, pilot
