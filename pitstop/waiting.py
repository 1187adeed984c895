"""Waiting on a condition with a deadline: the one way pitstop (and its tests) wait."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str = "condition",
               interval: float = 0.1, retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Exceptions listed in `retry_on` count as "not yet"; the last one is named in the
    TimeoutError raised when `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except retry_on as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")
        time.sleep(interval)
