"""Durations and moments as people type them on the command line (`6m`, `14d`, `1h30m`,
`now+2h`, `2026-12-07T09:00`), so `plans search`, `extend` and `attach` read them one way."""

from __future__ import annotations

import re
import time

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_MOMENT_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def parse_span(text: str) -> float:
    """`90s`, `6m`, `2h`, `14d`, `1w`, `1h30m` or plain seconds, as seconds (> 0)."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    else:
        parts = _PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"not a duration: {text!r} (write 90s, 6m, 2h, 14d, 1h30m)")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return seconds


def parse_moment(text: str, now: float | None = None) -> float:
    """`now`, `now+2h`, an epoch number, or local time `2026-12-07T09:00[:SS]`, as epoch seconds."""
    now = time.time() if now is None else now
    value = str(text).strip()
    if value.lower() == "now":
        return now
    if value.lower().startswith("now+"):
        return now + parse_span(value[4:])
    if re.fullmatch(r"\d{9,}(?:\.\d+)?", value):
        return float(value)
    for fmt in _MOMENT_FORMATS:
        try:
            return time.mktime(time.strptime(value, fmt))
        except ValueError:
            continue
    raise ValueError(f"not a time: {text!r} (write now, now+2h, or 2026-12-07T09:00)")


def human_span(seconds: float) -> str:
    """Seconds as `2d3h`, `1h30m`, `6m`, `45s`: the largest two units that are not zero."""
    seconds = int(round(seconds))
    if seconds <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2])


def local_time(epoch: float) -> str:
    """Epoch seconds as local `YYYY-MM-DD HH:MM:SS`, for tables."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
