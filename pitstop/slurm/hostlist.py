"""Slurm hostlist expressions: `node[1-3,7]`, `a[01-10]b`, `r[1-2]n[1-4]`, `a1,b[2-3]`.

Done in Python rather than with `scontrol show hostnames`, because the agent, the TUI
and the parsers expand thousands of lists per refresh and a process per list is too slow.
Zero padding is kept, ranges may appear several times in one name (a cartesian product),
and commas inside brackets do not split the list.
"""

from __future__ import annotations

import re
from itertools import product


class HostlistError(ValueError):
    pass


def expand(expression: str) -> list[str]:
    """Every host name in `expression`, in order, duplicates kept as written."""
    hosts: list[str] = []
    for item in _split_top(expression.strip()):
        hosts.extend(_expand_one(item))
    return hosts


def _split_top(expression: str) -> list[str]:
    items, depth, current = [], 0, []
    for ch in expression:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise HostlistError(f"nested brackets in hostlist {expression!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unbalanced ']' in hostlist {expression!r}")
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise HostlistError(f"unbalanced '[' in hostlist {expression!r}")
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


_BRACKET = re.compile(r"\[([^\]]*)\]")


def _expand_one(item: str) -> list[str]:
    pieces: list[list[str]] = []
    pos = 0
    for match in _BRACKET.finditer(item):
        pieces.append([item[pos:match.start()]])
        pieces.append(_expand_ranges(match.group(1), item))
        pos = match.end()
    pieces.append([item[pos:]])
    return ["".join(parts) for parts in product(*pieces)]


def _expand_ranges(body: str, item: str) -> list[str]:
    values: list[str] = []
    for part in body.split(","):
        part = part.strip()
        if not part:
            raise HostlistError(f"empty range in hostlist {item!r}")
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise HostlistError(f"range {part!r} in hostlist {item!r} is not numeric")
        if not sep:
            values.append(low)
            continue
        start, end = int(low), int(high)
        if end < start:
            raise HostlistError(f"range {part!r} in hostlist {item!r} runs backwards")
        if end - start > 1_000_000:
            raise HostlistError(f"range {part!r} in hostlist {item!r} is too large")
        width = len(low) if low.startswith("0") and len(low) > 1 else 0
        values.extend(str(n).zfill(width) for n in range(start, end + 1))
    return values


_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


def compress(hosts: list[str]) -> str:
    """The shortest usual form: hosts that differ only in their last number share brackets.

    Order of first appearance of each prefix is kept; numbers within a bracket are
    sorted and deduplicated, consecutive ones joined as ranges, padding kept per width.
    """
    groups: dict[tuple[str, str, int], set[int]] = {}
    order: list[tuple[str, str, int] | str] = []
    for host in hosts:
        match = _TRAILING_NUMBER.match(host)
        if not match:
            if host not in order:
                order.append(host)
            continue
        prefix, digits, suffix = match.groups()
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        key = (prefix, suffix, width)
        if key not in groups:
            groups[key] = set()
            order.append(key)
        groups[key].add(int(digits))
    # An unpadded number as wide as a padded group belongs to it: a08,a09,a10 is a[08-10].
    for (prefix, suffix, width), numbers in list(groups.items()):
        if width:
            continue
        for number in sorted(numbers):
            padded = (prefix, suffix, len(str(number)))
            if padded in groups and padded[2] > 1:
                groups[padded].add(number)
                numbers.discard(number)
        if not numbers:
            del groups[(prefix, suffix, width)]
            order.remove((prefix, suffix, width))
    parts: list[str] = []
    for key in order:
        if isinstance(key, str):
            parts.append(key)
            continue
        prefix, suffix, width = key
        numbers = sorted(groups[key])
        if len(numbers) == 1:
            parts.append(f"{prefix}{str(numbers[0]).zfill(width)}{suffix}")
            continue
        parts.append(f"{prefix}[{_ranges(numbers, width)}]{suffix}")
    return ",".join(parts)


def _ranges(numbers: list[int], width: int) -> str:
    out = []
    start = prev = numbers[0]
    for n in numbers[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        if start == prev:
            out.append(str(start).zfill(width))
        else:
            out.append(f"{str(start).zfill(width)}-{str(prev).zfill(width)}")
        if n is not None:
            start = prev = n
    return ",".join(out)
