"""YAML data files for the hooks whose errors name the file, the line and the key.

An operator edits the hooks' configuration and the per-model thresholds by hand; a typo
must point at the line to fix. Loading uses only the safe constructors (what
`yaml.safe_load` accepts) and keeps each mapping's key lines beside it.
(The agent has the same need in `pitstop.daemon.yamlfile`; one shared loader in the core
would serve both.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class DataFileError(ValueError):
    """A data file that cannot be used: `file:line: key: message`."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file, self.line, self.key, self.message = str(file), line, key, message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class YamlMapping(dict):
    """A YAML mapping that remembers its file and the line of each key."""

    file: str = "<string>"
    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}

    def error(self, key: Any, path: str, message: str) -> DataFileError:
        return DataFileError(self.file, self.key_lines.get(key, self.line), path, message)


class _Loader(yaml.SafeLoader):
    file_name = "<string>"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> YamlMapping:
    data = YamlMapping()
    data.file = loader.file_name
    data.line = node.start_mark.line + 1
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in data:
            raise DataFileError(loader.file_name, key_node.start_mark.line + 1, str(key),
                                f"given twice (first on line {data.key_lines[key]})")
        data.key_lines[key] = key_node.start_mark.line + 1
        data[key] = loader.construct_object(value_node, deep=True)
    return data


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_text(text: str, file: str = "<string>") -> Any:
    loader = _Loader(text)
    loader.file_name = str(file)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise DataFileError(file, mark.line + 1 if mark else None, "",
                            str(exc.problem or exc.context)) from None
    finally:
        loader.dispose()


def load_file(path: Path | str) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFileError(str(path), None, "", exc.strerror or str(exc)) from None
    return load_text(text, str(path))


def require_mapping(data: Any, file: str, path: str = "") -> YamlMapping:
    if data is None:
        empty = YamlMapping()
        empty.file = file
        return empty
    if not isinstance(data, YamlMapping):
        raise DataFileError(file, None, path, f"expected a mapping, not {type(data).__name__}")
    return data
