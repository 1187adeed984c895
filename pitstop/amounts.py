"""Amounts of space as operators write them (`10%`, `50GiB`, `200G`, bytes).

The agent's free-space findings and the hooks' quick check read the same settings, so
the same parser serves both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
          "gib": 1024**3, "tib": 1024**4}
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*|%)\s*$")


@dataclass(frozen=True)
class Amount:
    """A lower limit on free space: bytes, or a percent of the total."""

    bytes: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str | int) -> "Amount":
        """`10%`, `50GiB`, `200G`, `1073741824`; anything else is a ValueError."""
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(bytes=text)
        match = _AMOUNT.match(str(text))
        unit = match.group(2).lower() if match else None
        if match is None or (unit != "%" and unit not in _UNITS):
            raise ValueError(f"not an amount: {text!r} (write 10%, 50GiB, 200G or bytes)")
        number = float(match.group(1))
        if unit == "%":
            if not 0 <= number <= 100:
                raise ValueError(f"not a percent: {text!r}")
            return cls(percent=number)
        return cls(bytes=int(number * _UNITS[unit]))

    def limit_bytes(self, total: int) -> int:
        return self.bytes if self.bytes is not None else int(total * (self.percent or 0) / 100)

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return human_bytes(self.bytes or 0)


def human_bytes(count: float) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return f"{int(count)}B"
