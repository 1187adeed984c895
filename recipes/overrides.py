"""Command-line overrides in Hydra's grammar: `a.b=v` changes a key that exists, `+a.b=v`
adds one that does not, `++a.b=v` sets either way, `~a.b` (or `~a.b=v`, only if it holds v)
deletes one.

A change to a key that does not exist is an error that suggests the nearest key, so a typo
never becomes a silently ignored setting. Values are YAML scalars or flow collections.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import yaml

from pitstop.recipes.errors import RecipeError
from pitstop.recipes.schema import suggest
from pitstop.recipes.yamlmarks import KeyPath, parse_value

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*$")
_UNSET = object()


@dataclass(frozen=True)
class Override:
    text: str          # as typed, for messages
    op: str            # set | add | force | delete
    path: KeyPath
    value: Any = _UNSET

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def label(self) -> str:
        return f"override '{self.text}'"


def parse(text: str) -> Override:
    """One override as typed on the command line."""
    if text.startswith("~"):
        op, rest = "delete", text[1:]
    elif text.startswith("++"):
        op, rest = "force", text[2:]
    elif text.startswith("+"):
        op, rest = "add", text[1:]
    else:
        op, rest = "set", text
    key, has_value, raw = rest.partition("=")
    if not _KEY.match(key):
        form = "~key or ~key=value" if op == "delete" else "key=value, +key=value or ~key"
        raise RecipeError(f"override '{text}': expected {form} with a dotted key like "
                          "trainer.max_steps")
    if op != "delete" and not has_value:
        raise RecipeError(f"override '{text}': missing '=value' (to delete a key: ~{key})")
    value: Any = _UNSET
    if has_value:
        try:
            value = parse_value(raw)
        except yaml.YAMLError as error:
            reason = getattr(error, "problem", None) or str(error)
            raise RecipeError(f"override '{text}': the value {raw!r} is not valid YAML: "
                              f"{reason}") from None
    return Override(text=text, op=op, path=tuple(key.split(".")), value=value)


def _known_keys(cfg: dict[str, Any], prefix: KeyPath = ()) -> list[str]:
    keys = []
    for name, value in cfg.items():
        keys.append(".".join(prefix + (str(name),)))
        if isinstance(value, dict):
            keys += _known_keys(value, prefix + (str(name),))
    return keys


def _parent(cfg: dict[str, Any], override: Override, create: bool) -> dict[str, Any]:
    node = cfg
    for depth, part in enumerate(override.path[:-1]):
        child = node.get(part)
        if child is None and create and part not in node:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(override.path[:depth + 1])
            if part not in node:
                raise RecipeError(f"{override.label}: no key {where} in the config"
                                  f"{suggest(where, _known_keys(cfg))}")
            raise RecipeError(f"{override.label}: {where} is not a mapping, so it has no "
                              f"key {override.path[depth + 1]}")
        node = child
    return node


def apply(cfg: dict[str, Any], override: Override) -> None:
    """Apply one override to the composed (not yet interpolated) config, in place."""
    leaf = override.path[-1]
    parent = _parent(cfg, override, create=override.op in ("add", "force"))
    exists = leaf in parent
    if override.op == "set" and not exists:
        raise RecipeError(f"{override.label}: no key {override.dotted} in the config"
                          f"{suggest(override.dotted, _known_keys(cfg))} "
                          f"(to add a new key: +{override.text})")
    if override.op == "add" and exists:
        raise RecipeError(f"{override.label}: {override.dotted} already exists "
                          f"(it is {parent[leaf]!r}); to change it: {override.text[1:]}")
    if override.op == "delete":
        if not exists:
            raise RecipeError(f"{override.label}: no key {override.dotted} to delete"
                              f"{suggest(override.dotted, _known_keys(cfg))}")
        if override.value is not _UNSET and parent[leaf] != override.value:
            raise RecipeError(f"{override.label}: {override.dotted} is {parent[leaf]!r}, "
                              f"not {override.value!r}, so it was not deleted")
        del parent[leaf]
        return
    parent[leaf] = copy.deepcopy(override.value)
