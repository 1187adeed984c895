"""systemd unit files as data: sections of (key, value) pairs rendered in one place.

The agent's unit (`pitstop hooks install`) and the plans watcher's (`pitstop plans
service`) are both built here, so their options read as tables and both come out in the
same form. Values go into ExecStart as written: callers pass absolute paths without
spaces (systemd would need them quoted).
"""

from __future__ import annotations

from typing import Mapping, Sequence


def render_unit(sections: Mapping[str, Sequence[tuple[str, str]]]) -> str:
    """INI text for systemd: one `[Section]` block per key, lines in the order given."""
    blocks = []
    for section, pairs in sections.items():
        blocks.append("\n".join([f"[{section}]", *(f"{key}={value}" for key, value in pairs)]))
    return "\n\n".join(blocks) + "\n"
