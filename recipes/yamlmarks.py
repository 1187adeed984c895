"""Recipe YAML with line numbers: errors in a recipe name the file and the line.

`load_with_lines` returns the data and, for every mapping key, the line it sits on, so a
type error found after composition can still point at the line that set the value. The
loader is a `yaml.SafeLoader` with YAML 1.2's number rules, which is what people typing a
recipe expect: `3e-4` is a float (YAML 1.1 reads it as a string), `1:00:00` is a string
(YAML 1.1 reads it as the sexagesimal number 3600) and so is `2026-01-01` (not a date).
Duplicate keys are errors, not a
silent last-one-wins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pitstop.recipes.errors import RecipeError

KeyPath = tuple[str, ...]

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"""^(?:[-+]?[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9]+[eE][-+]?[0-9]+
    |[-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: no sexagesimals, exponents without a dot, and no
    implicit timestamps (`2026-01-01` stays a string)."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in (_INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
RecipeLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text, 10)


RecipeLoader.add_constructor(_INT_TAG, _construct_int)


def _describe(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when under it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def where(path: Path | str, line: int | None) -> str:
    """`file:line`, the prefix of every message about a place in a recipe file."""
    return f"{_describe(path)}:{line}" if line else _describe(path)


def _yaml_problem(path: Path | str, error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        text = error.problem or ""
        if error.context:
            started = error.context_mark
            at = (f" (from line {started.line + 1})"
                  if started and mark and started.line != mark.line else "")
            text = f"{error.context}{at}: {text}"
        column = f" (column {mark.column + 1})" if mark else ""
        return f"{where(path, line)}: YAML error{column}: {text}"
    return f"{_describe(path)}: YAML error: {error}"


def _record_lines(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int],
                  path: Path | str, problems: list[str]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (f"[{index}]",)] = item.start_mark.line + 1
            _record_lines(item, prefix + (f"[{index}]",), lines, path, problems)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            problems.append(f"{where(path, key_node.start_mark.line + 1)}: "
                            f"a key must be a plain name, not a {key_node.id}")
            continue
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            dotted = ".".join(prefix + (key,))
            problems.append(f"{where(path, line)}: duplicate key {dotted} "
                            f"(first set on line {seen[key]})")
            continue
        seen[key] = line
        lines[prefix + (key,)] = line
        _record_lines(value_node, prefix + (key,), lines, path, problems)


def load_with_lines(path: Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """A recipe file's mapping and the line of each of its keys (by key path).

    A list item's line is under its index: `("defaults", "[0]")`.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"{_describe(path)}: cannot read: {error}") from None
    loader = RecipeLoader(text)
    loader.name = str(path)
    problems: list[str] = []
    lines: dict[KeyPath, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        _record_lines(node, (), lines, path, problems)
        if problems:
            raise RecipeError(problems)
        data = loader.construct_document(node)
    except yaml.YAMLError as error:
        raise RecipeError(_yaml_problem(path, error)) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise RecipeError(f"{where(path, node.start_mark.line + 1)}: expected a mapping of "
                          f"keys to values, found a {type(data).__name__}")
    return data, lines


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar or flow collection (`8`, `3e-4`, `[wq,wv]`, `null`)."""
    return yaml.load(text, Loader=RecipeLoader)
