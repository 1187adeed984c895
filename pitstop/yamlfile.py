"""YAML data files whose errors name the file, the line and the key.

Operators edit pitstop's data files by hand (the agent's policy and log patterns, its
settings, the hooks' settings and thresholds).
A mistake there must point at the line to fix, so loading keeps each mapping's and each
key's line: `load_yaml` builds plain dicts (a `dict` subclass, `MarkedDict`) with the
lines beside them, using only the safe constructors (what `yaml.safe_load` accepts).
A key given twice in one mapping is an error here, where YAML would silently keep the
last one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

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


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's scalars, what people typing a file expect: `3e-4` is a
    float (YAML 1.1: a string), `1:00:00` a string (1.1: the sexagesimal 3600), `0755` the
    decimal 755 (1.1: octal), and `2026-01-01` a string (1.1: a date). Every pitstop data
    file and recipe is read with it."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in (_INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
Yaml12Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text, 10)


Yaml12Loader.add_constructor(_INT_TAG, _construct_int)


def key_path_lines(node: yaml.Node, prefix: KeyPath = ()) -> tuple[dict[KeyPath, int], list[tuple[int, str]]]:
    """The line of every key of a composed YAML node, by key path (a list item's under
    its index: `("defaults", "[0]")`), and the problems found on the way as (line,
    message): a key given twice, a key that is not a plain name."""
    lines: dict[KeyPath, int] = {}
    problems: list[tuple[int, str]] = []
    _walk(node, prefix, lines, problems)
    return lines, problems


def _walk(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int], problems: list[tuple[int, str]]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (f"[{index}]",)] = item.start_mark.line + 1
            _walk(item, prefix + (f"[{index}]",), lines, problems)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            problems.append((line, f"a key must be a plain name, not a {key_node.id}"))
            continue
        key = str(key_node.value)
        if key in seen:
            problems.append((line, f"duplicate key {'.'.join(prefix + (key,))} (first set on line {seen[key]})"))
            continue
        seen[key] = line
        lines[prefix + (key,)] = line
        _walk(value_node, prefix + (key,), lines, problems)


class DataFileError(ValueError):
    """A data file that cannot be used: `file:line: key: message`."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file, self.line, self.key, self.message = str(file), line, key, message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class MarkedDict(dict):
    """A mapping from a YAML file, with the file and line of the mapping and of each key.

    `key_files` is set only for a mapping merged from several files (an override over a
    default): it names the file each key came from.
    """

    file: str = "<string>"
    line: int | None = None
    key_lines: dict[Any, int]
    key_files: dict[Any, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}
        self.key_files = {}

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)

    def file_of(self, key: Any) -> str:
        return self.key_files.get(key, self.file)

    def error(self, key: Any, path: str, message: str) -> "DataFileError":
        """A DataFileError at `key` of this mapping; `path` is the dotted key to name."""
        return DataFileError(self.file_of(key), self.line_of(key), path, message)


class _MarkedLoader(Yaml12Loader):
    """SafeLoader that builds MarkedDicts and refuses duplicate keys."""


def _construct_marked_map(loader: _MarkedLoader, node: yaml.MappingNode):
    data = MarkedDict()
    data.file = getattr(loader, "file_name", "<string>")
    data.line = node.start_mark.line + 1
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "found an unhashable key", key_node.start_mark) from None
        if key in data:
            raise DataFileError(data.file, key_node.start_mark.line + 1, str(key),
                                f"given twice (first on line {data.key_lines[key]})")
        data.key_lines[key] = key_node.start_mark.line + 1
        data[key] = loader.construct_object(value_node, deep=True)


_MarkedLoader.add_constructor("tag:yaml.org,2002:map", _construct_marked_map)


def parse_yaml(text: str, file: str = "<string>") -> Any:
    """The document in `text`, mappings as MarkedDicts; DataFileError on bad YAML."""
    loader = _MarkedLoader(text)
    loader.file_name = file
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise DataFileError(file, line, "", problem or "invalid YAML") from None
    except yaml.YAMLError as err:
        raise DataFileError(file, None, "", f"invalid YAML: {err}") from None
    finally:
        loader.dispose()


def load_yaml(path: Path | str) -> Any:
    """The document in the file at `path`; DataFileError names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataFileError(str(path), None, "", f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DataFileError(str(path), None, "", f"not UTF-8 text: {err.reason}") from None
    return parse_yaml(text, str(path))


def line_of(container: Any, key: Any = None) -> int | None:
    """The line of `key` in a MarkedDict (or of the mapping), None for other values."""
    if isinstance(container, MarkedDict):
        return container.line if key is None else container.line_of(key)
    return None
