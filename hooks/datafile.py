"""YAML data files for the hooks: the core's line-numbered loader (pitstop.yamlfile),
under the names the hooks use, and the one check they add (a document must be a mapping).
"""

from __future__ import annotations

from typing import Any

from pitstop.yamlfile import DataFileError, MarkedDict
from pitstop.yamlfile import load_yaml as load_file
from pitstop.yamlfile import parse_yaml as load_text

YamlMapping = MarkedDict

__all__ = ["DataFileError", "YamlMapping", "load_file", "load_text", "require_mapping"]


def require_mapping(data: Any, file: str, path: str = "") -> YamlMapping:
    if data is None:
        empty = YamlMapping()
        empty.file = file
        return empty
    if not isinstance(data, YamlMapping):
        raise DataFileError(file, None, path, f"expected a mapping, not {type(data).__name__}")
    return data
