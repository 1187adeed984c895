"""Per-device-model limits for the full check, read from a data file.

What counts as a slow GPU depends on the GPU: an A100's healthy memory bandwidth is an
H200's failing one. The figures live in `thresholds.yaml` (one row per model, NVML's
device name as the key), so a new model is a data change; errors name the file, line
and key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitstop.hooks.datafile import DataFileError, YamlMapping, load_file, require_mapping

METRICS = ("matmul_gflops", "memory_bandwidth_gbs", "allreduce_busbw_gbs")


@dataclass(frozen=True)
class Limit:
    """A figure must stay at or above `fail_below`; below `warn_below` it warns."""

    fail_below: float
    warn_below: float | None = None

    def judge(self, value: float) -> str:
        if value < self.fail_below:
            return "fail"
        if self.warn_below is not None and value < self.warn_below:
            return "warn"
        return "pass"

    def __str__(self) -> str:
        text = f"≥{self.fail_below:g}"
        return text + (f" (warn <{self.warn_below:g})" if self.warn_below is not None else "")


@dataclass(frozen=True)
class ModelThresholds:
    model: str
    limits: dict[str, Limit]
    sdc_tolerance: float


def _limit(value: Any, row: YamlMapping, key: str, path: str) -> Limit:
    if not isinstance(value, YamlMapping) or "fail_below" not in value:
        raise row.error(key, path, "expected {fail_below: N} with an optional warn_below")
    for name, item in value.items():
        if name not in ("fail_below", "warn_below"):
            raise value.error(name, f"{path}.{name}", "unknown (known: fail_below, warn_below)")
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0:
            raise value.error(name, f"{path}.{name}", f"expected a number ≥ 0, not {item!r}")
    warn = value.get("warn_below")
    if warn is not None and warn < value["fail_below"]:
        raise value.error("warn_below", f"{path}.warn_below", "must be at least fail_below")
    return Limit(float(value["fail_below"]), None if warn is None else float(warn))


def parse_thresholds(data: Any, file: str) -> dict[str, ModelThresholds]:
    data = require_mapping(data, file)
    if "default" not in data:
        raise DataFileError(file, None, "default", "a `default` row is required")
    models = {}
    for model, row in data.items():
        if not isinstance(row, YamlMapping):
            raise data.error(model, str(model), "expected a mapping of metric: limit")
        limits = {}
        for key, value in row.items():
            path = f"{model}.{key}"
            if key in METRICS:
                limits[key] = _limit(value, row, key, path)
            elif key != "sdc_tolerance":
                raise row.error(key, path, f"unknown (known: {', '.join(METRICS)}, sdc_tolerance)")
        missing = [m for m in METRICS if m not in limits]
        if missing:
            raise data.error(model, str(model), f"missing {', '.join(missing)}")
        tolerance = row.get("sdc_tolerance")
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
            raise row.error("sdc_tolerance", f"{model}.sdc_tolerance",
                            f"expected a number between 0 and 1, not {tolerance!r}")
        models[str(model)] = ModelThresholds(str(model), limits, float(tolerance))
    return models


def load_thresholds(path: Path | str) -> dict[str, ModelThresholds]:
    return parse_thresholds(load_file(path), str(path))


def for_model(table: dict[str, ModelThresholds], model: str) -> ModelThresholds:
    """The row for `model`, else `default` (a new model still gets checked)."""
    return table.get(model) or table["default"]
