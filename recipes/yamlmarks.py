"""Recipe YAML with line numbers: errors in a recipe name the file and the line.

`load_with_lines` returns the data and, for every mapping key, the line it sits on, so a
type error found after composition can still point at the line that set the value. The
loader and the key walk are the core's (`pitstop.yamlfile`: YAML 1.2 scalars, duplicate
keys are errors); what is the recipes' own is the message form, `file:line: …` with the
path relative to the working directory, every problem of a file at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pitstop.recipes.errors import RecipeError
from pitstop.yamlfile import KeyPath, Yaml12Loader, key_path_lines

RecipeLoader = Yaml12Loader  # recipes read YAML as every pitstop data file does


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
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines, problems = key_path_lines(node)
        if problems:
            raise RecipeError([f"{where(path, line)}: {message}" for line, message in problems])
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
