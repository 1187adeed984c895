"""Composition: a recipe name and the user's overrides in, the resolved config out.

The order is Hydra's, so that users of Hydra and torchtune find what they expect:
schema defaults, then the recipe's `defaults:` list (`- model: llama3-8b` merges
`model/llama3-8b.yaml` under `model`; `_self_` marks where the recipe's own keys go, at
the end when it is not listed), then command-line overrides, then `${…}` interpolation
(OmegaConf's grammar), then the schema and the cross-key checks. Every key remembers the
file and line (or the override) that set it last, so every error points there.

`model=llama3-70b` on the command line picks another option of a group in the recipe's
defaults list; `+optimizer=sgd` adds a group the list does not name.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pitstop.recipes import checks, overrides, schema
from pitstop.recipes.errors import RecipeError
from pitstop.recipes.yamlmarks import KeyPath, load_with_lines, where

COLLECTION = Path(__file__).resolve().parent / "collection"
SELF = "_self_"


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    description: str
    hardware: str
    task: str
    path: Path
    error: str | None = None     # set when the recipe does not compose; the rest may be empty

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass(frozen=True)
class _Layer:
    """One file's keys, merged under `package` (() for a recipe, ("model",) for model/x.yaml)."""
    data: dict[str, Any]
    lines: dict[KeyPath, int]
    file: Path
    package: KeyPath

    def origin(self, path: KeyPath) -> str:
        relative = path[len(self.package):]
        while relative and relative not in self.lines:
            relative = relative[:-1]
        return where(self.file, self.lines.get(relative))


class _Origins:
    """Who set each key last: `file:line` or `override '…'`; schema defaults have none."""

    def __init__(self) -> None:
        self.by_path: dict[KeyPath, str] = {}
        self.deleted: dict[KeyPath, str] = {}

    def record(self, path: KeyPath, value: Any, label_of) -> None:
        for known in [p for p in self.by_path if p[:len(path)] == path]:
            del self.by_path[known]
        self.by_path[path] = label_of(path)
        if isinstance(value, dict):
            for key, inner in value.items():
                self.record(path + (str(key),), inner, label_of)

    def __call__(self, path: KeyPath) -> str:
        """`where: ` for messages (the key's, its nearest parent's or, for a section that
        only its children set, a child's), or ""."""
        probe = path
        while probe:
            if probe in self.by_path:
                return f"{self.by_path[probe]}: "
            probe = probe[:-1]
        for known, label in self.by_path.items():
            if path and known[:len(path)] == path:
                return f"{label}: "
        return ""

    def missing_hint(self, path: KeyPath) -> str:
        for deleted, label in self.deleted.items():
            if path[:len(deleted)] == deleted:
                return f" (deleted by {label})"
        return ""


def recipe_names() -> list[str]:
    return sorted(path.stem for path in COLLECTION.glob("*.yaml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """The file of a collection recipe by name, or a recipe file given by its path."""
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix in (".yaml", ".yml") or "/" in text:
        if candidate.is_file():
            return candidate
        raise RecipeError(f"{text}: no such recipe file")
    path = COLLECTION / f"{text}.yaml"
    if path.is_file():
        return path
    near = difflib.get_close_matches(text, recipe_names(), n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]}?" if near else ""
    raise RecipeError(f"no recipe named {text!r} in the collection{hint} "
                      "(`pitstop recipes list` shows them all)")


def _search_dirs(recipe_path: Path) -> list[Path]:
    dirs = [recipe_path.resolve().parent]
    if COLLECTION not in dirs:
        dirs.append(COLLECTION)
    return dirs


def _group_options(group: str, search: list[Path]) -> list[str]:
    return sorted({p.stem for d in search for p in (d / group).glob("*.yaml")})


def _group_file(group: str, option: str, search: list[Path], asked_at: str) -> Path:
    if "/" in option or option.startswith("."):
        raise RecipeError(f"{asked_at}: {group} option {option!r} must be a file name "
                          f"without a path (one of: {', '.join(_group_options(group, search))})")
    for directory in search:
        path = directory / group / f"{option}.yaml"
        if path.is_file():
            return path
    options = _group_options(group, search)
    if not options:
        raise RecipeError(f"{asked_at}: no config group {group!r} (no folder {group}/ beside "
                          "the recipe or in the collection)")
    near = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]}?" if near else ""
    raise RecipeError(f"{asked_at}: no {group} option {option!r}{hint} "
                      f"(options: {', '.join(options)})")


@dataclass(frozen=True)
class _Entry:
    group: str | None        # None: the file's own keys (_self_) or a same-group option
    option: str
    asked_at: str            # file:line of the entry


def _defaults_list(data: dict[str, Any], lines: dict[KeyPath, int], path: Path,
                   in_group: str | None) -> list[_Entry]:
    """The `defaults:` entries of one file, `_self_` placed last when it is not listed."""
    raw = data.pop("defaults", [])
    at_key = where(path, lines.get(("defaults",)))
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise RecipeError(f"{at_key}: defaults must be a list, like `- model: llama3-8b`")
    entries = []
    for index, item in enumerate(raw):
        asked_at = where(path, lines.get(("defaults", f"[{index}]"), lines.get(("defaults",))))
        if item == SELF:
            entries.append(_Entry(None, SELF, asked_at))
        elif isinstance(item, str) and in_group is not None:
            entries.append(_Entry(None, item, asked_at))
        elif (isinstance(item, dict) and len(item) == 1 and in_group is None
              and isinstance(next(iter(item)), str)):
            group, option = next(iter(item.items()))
            if option is None:
                continue
            if not isinstance(option, str):
                raise RecipeError(f"{asked_at}: defaults entry {group}: expected an option "
                                  f"name, got {option!r}")
            entries.append(_Entry(group, option, asked_at))
        else:
            form = ("`- other-option` (of the same group) or `- _self_`" if in_group
                    else "`- group: option` (like `- model: llama3-8b`) or `- _self_`")
            raise RecipeError(f"{asked_at}: defaults entry {item!r}: expected {form}")
    if not any(e.option == SELF and e.group is None for e in entries):
        entries.append(_Entry(None, SELF, at_key))
    return entries


def _layers(path: Path, package: KeyPath, search: list[Path], group: str | None,
            choices: dict[str, str], stack: tuple[Path, ...]) -> list[_Layer]:
    """The layers of one file, in merge order: its defaults, itself at `_self_`."""
    resolved = path.resolve()
    if resolved in stack:
        chain = " -> ".join(where(p, None) for p in stack + (resolved,))
        raise RecipeError(f"{where(path, None)}: defaults form a cycle: {chain}")
    data, lines = load_with_lines(path)
    entries = _defaults_list(data, lines, path, group)
    found: list[_Layer] = []
    for entry in entries:
        if entry.option == SELF:
            found.append(_Layer(data, lines, path, package))
            continue
        entry_group = entry.group or group
        assert entry_group is not None
        option = entry.option
        if entry.group is not None and entry.group in choices:
            option = choices.pop(entry.group)
        file = _group_file(entry_group, option, search, entry.asked_at)
        found += _layers(file, (entry_group,), search, entry_group, {},
                         stack + (resolved,))
    return found


def _merge(target: dict[str, Any], source: dict[str, Any], prefix: KeyPath,
           origins: _Origins, layer: _Layer) -> None:
    for key, value in source.items():
        path = prefix + (str(key),)
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, path, origins, layer)
        else:
            target[key] = copy.deepcopy(value)
            origins.record(path, value, layer.origin)


def _split_overrides(texts: Iterable[str], groups: set[str],
                     search: list[Path]) -> tuple[dict[str, str], list[str], list[overrides.Override]]:
    """Group choices (`model=llama3-70b`), groups to add (`+optimizer=sgd`), value overrides."""
    choices: dict[str, str] = {}
    added: list[str] = []
    values: list[overrides.Override] = []
    for text in texts:
        override = overrides.parse(text)
        selects_group = (len(override.path) == 1 and isinstance(override.value, str)
                         and override.op in ("set", "add")
                         and _group_options(override.dotted, search))
        if selects_group and override.op == "set" and override.dotted in groups:
            _group_file(override.dotted, override.value, search, override.label)
            choices[override.dotted] = override.value
        elif selects_group and override.op == "add" and override.dotted not in groups:
            added.append(text[1:])
        else:
            values.append(override)
    return choices, added, values


def _resolve(cfg: dict[str, Any], origins: _Origins) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True,
                                      throw_on_missing=True)
    except OmegaConfBaseException as error:
        full_key = str(getattr(error, "full_key", "") or "")
        path = tuple(part for part in re.split(r"[.\[\]]+", full_key) if part)
        message = str(getattr(error, "msg", error)).split("\n")[0]
        missing = re.match(r"Interpolation key '(.+)' not found", message)
        hint = schema.suggest(missing.group(1), schema.all_keys()) if missing else ""
        raw: Any = cfg
        for part in path:
            raw = raw.get(part) if isinstance(raw, dict) else None
        shown = f" {raw!r}" if isinstance(raw, str) else ""
        raise RecipeError(f"{origins(path)}{full_key or '(top level)'}: cannot interpolate"
                          f"{shown}: {message}{hint}") from None


def compose_with_origins(name_or_path: str | Path,
                         override_texts: Sequence[str] = ()) -> tuple[dict[str, Any], _Origins]:
    """The resolved, validated config and where each key was set."""
    path = find_recipe(name_or_path)
    name = path.stem
    try:
        search = _search_dirs(path)
        top_data, _ = load_with_lines(path)
        listed = top_data.get("defaults") or []
        groups = {next(iter(e)) for e in listed if isinstance(e, dict) and len(e) == 1}
        choices, added, value_overrides = _split_overrides(override_texts, groups, search)
        origins = _Origins()
        cfg = schema.defaults()
        cfg = {"name": name, **cfg}
        layers = _layers(path, (), search, None, choices, ())
        for text in added:
            group, _, option = text.partition("=")
            file = _group_file(group, option, search, f"override '+{text}'")
            layers += _layers(file, (group,), search, group, {}, ())
        for layer in layers:
            target = cfg
            for part in layer.package:
                if not isinstance(target.get(part), dict):
                    target[part] = {}
                target = target[part]
            _merge(target, layer.data, layer.package, origins, layer)
        for override in value_overrides:
            overrides.apply(cfg, override)
            if override.op == "delete":
                origins.record(override.path, None, lambda p: override.label)
                origins.deleted[override.path] = override.label
            else:
                origins.record(override.path, override.value, lambda p: override.label)
        resolved = _resolve(cfg, origins)
        typed, problems = schema.check_types(resolved, origins, origins.missing_hint)
        if problems:
            raise RecipeError(problems)
        problems = checks.check(typed, origins)
        if problems:
            raise RecipeError(problems)
    except RecipeError as error:
        raise error.for_recipe(name) from None
    return typed, origins


def compose(name_or_path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved, validated config of a recipe (every key of docs/recipe-schema.md).

    Raises RecipeError naming the file and line, the override, or the key at fault.
    """
    return compose_with_origins(name_or_path, overrides)[0]


def list_recipes() -> list[RecipeInfo]:
    """Every recipe of the collection, by name; one that fails to compose carries `error`."""
    found = []
    for name in recipe_names():
        path = COLLECTION / f"{name}.yaml"
        try:
            cfg = compose(path)
        except RecipeError as error:
            found.append(RecipeInfo(name, "", "", "", path, error=str(error)))
            continue
        found.append(RecipeInfo(name, cfg["description"], cfg["hardware"], cfg["task"], path))
    return found


class _ConfigDumper(yaml.SafeDumper):
    """Block mappings; short lists of scalars on one line (`betas: [0.9, 0.95]`)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


def to_yaml(cfg: dict[str, Any]) -> str:
    """A resolved config as the YAML the runtime reads with yaml.safe_load."""
    return yaml.dump(cfg, Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
