"""Waiting inside a Pilot session on what the screen shows, with a deadline."""

from __future__ import annotations

import asyncio
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
    if key not in table.signatures:
        return None
    return "  ".join(str(getattr(cell, "plain", cell)) for cell in table.get_row(key))


def message(app) -> str:
    return str(app.main.query_one("#message").render())


def status(app) -> str:
    return str(app.main.query_one("#status").render())


async def select(pilot, view: str, key: str) -> None:
    """Move the cursor to row `key` with the arrow keys, as a person would."""
    table = pilot.app.main.table(view)
    await wait_for(pilot, lambda: key in table.signatures, what=f"row {key} in {view}")
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
