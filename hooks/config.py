"""The hooks' settings: what a healthy node looks like, and how hard the full check works.

One YAML file (`/etc/pitstop/hooks.yaml` by default, `--config FILE` elsewhere) read
once per run: the Prolog reads it on every job start, so it is small and flat. A
`nodes:` section overrides any top-level key for named nodes, so a heterogeneous
cluster keeps one file. Unknown keys are errors that name the file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pitstop.amounts import Amount, human_bytes
from pitstop.hooks.datafile import DataFileError, YamlMapping, load_file, require_mapping

DEFAULT_CONFIG = Path("/etc/pitstop/hooks.yaml")
CONFIG_ENV = "PITSTOP_HOOKS_CONFIG"

@dataclass(frozen=True)
class FullSettings:
    """How long and how big the full check's measurements are (small in tests)."""

    matmul_size: int = 2048  # n of the n×n float32 matrices
    matmul_seconds: float = 10.0  # sustained load per device
    bandwidth_mib: int = 1024  # tensor copied for memory bandwidth
    bandwidth_iterations: int = 20
    allreduce_mib: int = 64  # message size of the all-reduce
    allreduce_iterations: int = 20
    allreduce_processes: int = 0  # 0: one per device, two on a CPU-only node
    cpu_devices: int = 2  # logical devices on a CPU-only node, so cross-device SDC runs too


@dataclass(frozen=True)
class HooksConfig:
    """What a healthy node has; every field has a default that checks nothing it cannot know."""

    expected_gpus: int | None = None
    accelerator_glob: str = "/dev/nvidia[0-9]*"
    expected_neuron_devices: int | None = None
    neuron_glob: str = "/dev/neuron[0-9]*"
    nvml: str = "auto"  # auto: skip where there is no driver; required: fail; off
    min_free: dict[str, Amount] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    agent_port: int | None = None
    agent_host: str = "127.0.0.1"
    clock_sync: str = "auto"  # auto: skip where no tool answers; off
    thresholds_file: str | None = None  # None: the shipped hooks/thresholds.yaml
    device_model: str | None = None  # None: NVML's name, else `cpu`
    full: FullSettings = field(default_factory=FullSettings)
    source: str = "<defaults>"

    @property
    def thresholds_path(self) -> Path:
        return Path(self.thresholds_file) if self.thresholds_file else Path(__file__).with_name("thresholds.yaml")


def _amounts(value: Any, data: YamlMapping, key: str) -> dict[str, Amount]:
    if not isinstance(value, dict):
        raise data.error(key, key, "expected a mapping of path: amount (e.g. /scratch: 10%)")
    out = {}
    for path, amount in value.items():
        try:
            out[str(path)] = Amount.parse(amount)
        except ValueError as exc:
            raise (value.error(path, f"{key}.{path}", str(exc)) if isinstance(value, YamlMapping)
                   else data.error(key, key, str(exc))) from None
    return out


def _optional_int(value: Any, data: YamlMapping, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise data.error(key, key, f"expected a whole number ≥ 0, not {value!r}")
    return value


def _str_list(value: Any, data: YamlMapping, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise data.error(key, key, "expected a list of paths")
    return list(value)


def _choice(*allowed: str):
    def parse(value: Any, data: YamlMapping, key: str) -> str:
        if value not in allowed:
            raise data.error(key, key, f"expected one of {', '.join(allowed)}, not {value!r}")
        return value
    return parse


def _text(value: Any, data: YamlMapping, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise data.error(key, key, f"expected text, not {value!r}")
    return value


def _full(value: Any, data: YamlMapping, key: str) -> FullSettings:
    if not isinstance(value, YamlMapping):
        raise data.error(key, key, "expected a mapping")
    known = {f.name: f for f in fields(FullSettings)}
    settings: dict[str, Any] = {}
    for name, item in value.items():
        if name not in known:
            raise value.error(name, f"{key}.{name}", f"unknown setting (known: {', '.join(known)})")
        kind = float if known[name].type == "float" else int
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0 or (
                kind is int and not isinstance(item, int)):
            raise value.error(name, f"{key}.{name}", f"expected a {kind.__name__} ≥ 0, not {item!r}")
        settings[name] = kind(item)
    return FullSettings(**settings)


# top-level key -> parser(value, mapping, key)
_PARSERS = {
    "expected_gpus": _optional_int,
    "accelerator_glob": _text,
    "expected_neuron_devices": _optional_int,
    "neuron_glob": _text,
    "nvml": _choice("auto", "required", "off"),
    "min_free": _amounts,
    "mounts": _str_list,
    "agent_port": _optional_int,
    "agent_host": _text,
    "clock_sync": _choice("auto", "off"),
    "thresholds_file": _text,
    "device_model": _text,
    "full": _full,
}


def _apply(config: HooksConfig, data: YamlMapping, prefix: str = "") -> HooksConfig:
    changes = {}
    for key, value in data.items():
        if key not in _PARSERS:
            raise data.error(key, prefix + str(key), f"unknown setting (known: {', '.join(_PARSERS)}, nodes)")
        try:
            changes[key] = _PARSERS[key](value, data, key)
        except DataFileError as exc:  # name the key as the file spells it: nodes.node2.…
            raise DataFileError(exc.file, exc.line, prefix + exc.key, exc.message) from None
    return replace(config, **changes)


def parse_config(data: Any, file: str, node: str | None = None) -> HooksConfig:
    """A HooksConfig from a loaded YAML document, with `nodes.<node>` laid over the rest."""
    data = require_mapping(data, file)
    per_node = require_mapping(data.get("nodes"), file, "nodes")
    if not isinstance(per_node, YamlMapping):
        raise data.error("nodes", "nodes", "expected a mapping of node name: settings")
    top = YamlMapping({k: v for k, v in data.items() if k != "nodes"})
    top.file, top.line, top.key_lines = data.file, data.line, data.key_lines
    config = replace(_apply(HooksConfig(), top), source=file)
    for name, overrides in per_node.items():
        if not isinstance(overrides, YamlMapping):
            raise per_node.error(name, f"nodes.{name}", "expected a mapping of settings")
        _apply(HooksConfig(), overrides, f"nodes.{name}.")  # every node's block is checked
        if node is not None and str(name) == node:
            config = _apply(config, overrides, f"nodes.{name}.")
    return config


def load_config(path: Path | str | None = None, node: str | None = None) -> HooksConfig:
    """The settings at `path`, else $PITSTOP_HOOKS_CONFIG, else /etc/pitstop/hooks.yaml
    where it exists, else the defaults."""
    chosen = path or os.environ.get(CONFIG_ENV)
    if chosen is None:
        if not DEFAULT_CONFIG.exists():
            return HooksConfig()
        chosen = DEFAULT_CONFIG
    if node is None:
        node = this_node()
    return parse_config(load_file(chosen), str(chosen), node)


def this_node() -> str:
    """This node's Slurm name: $SLURMD_NODENAME inside Slurm's hooks, else the short hostname."""
    return os.environ.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]


__all__ = ["Amount", "DataFileError", "FullSettings", "HooksConfig", "load_config", "parse_config",
           "human_bytes", "this_node"]
