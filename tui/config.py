"""The TUI's config file: `~/.config/pitstop/tui.yaml` or `--config`, read with
yaml.safe_load and checked whole before the screen starts, so a typo is one line on
stderr, not a key that silently does nothing.

    keymap:              # binding id -> key(s); `?` in the TUI lists the ids
      pitstop.drain: x
    interval: 5          # seconds between refreshes
    readonly: true
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_config(path: Path | None, known_ids: set[str]) -> dict[str, Any]:
    """`~/.config/pitstop/tui.yaml` (or `--config`): `keymap: {binding id: key}`, `interval`,
    `readonly`. A missing default file is an empty config; a bad one is a ValueError."""
    explicit = path is not None
    path = Path(path) if explicit else Path("~/.config/pitstop/tui.yaml").expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise ValueError(f"{path}: no such file") from None
        return {}
    except OSError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ValueError(f"{path}{where}: not YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping (keymap:, interval:, readonly:)")
    unknown = set(data) - {"keymap", "interval", "readonly"}
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; "
                         "known: keymap, interval, readonly")
    keymap = data.get("keymap") or {}
    if not isinstance(keymap, dict) or not all(isinstance(k, str) and isinstance(val, str)
                                               for k, val in keymap.items()):
        raise ValueError(f"{path}: keymap maps binding ids to keys, e.g. pitstop.drain: D")
    bad = sorted(set(keymap) - known_ids)
    if bad:
        raise ValueError(f"{path}: unknown binding id(s) {', '.join(bad)}; press ? in the TUI for the list")
    if "interval" in data and not (isinstance(data["interval"], (int, float)) and data["interval"] > 0):
        raise ValueError(f"{path}: interval must be a positive number of seconds")
    if not isinstance(data.get("readonly", False), bool):
        raise ValueError(f"{path}: readonly is true or false")
    return data
