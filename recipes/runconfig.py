"""The resolved config as the runtime reads it, checked once at start so a bad value
stops the job in its first second with the key's name, not an hour in with a traceback.

The schema and the cross-key checks are the composer's (`schema.check_types`,
`checks.check`): one definition of a sound recipe for `pitstop recipes validate` and the
runtime alike. What only the runtime can judge is here: the parallel degrees against the
world size it actually got, and what this runtime does not implement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pitstop import rundir
from pitstop.recipes import checks, schema


class ConfigError(ValueError):
    """The resolved config is missing a key, has an unknown or ill-typed one, or asks for
    what this runtime cannot do; the message names the key."""


def _no_origin(_path) -> str:
    return ""


def check(raw: Any) -> dict:
    """The resolved config, validated, numbers normalised; raises ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(raw).__name__}")
    cfg, problems = schema.check_types(raw, _no_origin)
    if not problems:
        problems = checks.check(cfg, _no_origin)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def load(run_dir: Path) -> dict:
    path = Path(run_dir) / rundir.CONFIG
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (the launcher writes the resolved config there)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    # A run resolved by an older pitstop (a job requeued across an upgrade) lacks the keys
    # added since: they take their defaults, so the run resumes as it was launched.
    return check(_with_defaults(raw, schema.defaults()))


def _with_defaults(raw: Any, base: dict) -> Any:
    if not isinstance(raw, dict):
        return raw
    merged = dict(raw)
    for key, value in base.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict):
            merged[key] = _with_defaults(merged[key], value)
    return merged


def data_parallel_degree(parallel: dict, world_size: int, accelerator: str) -> int:
    """The data-parallel degree of parallel.* in the world this job got; raises ConfigError."""
    for key in ("tensor", "context", "expert"):
        if parallel[key] > 1:
            raise ConfigError(f"parallel.{key}: {parallel[key]} is not supported by this runtime (use 1)")
    fsdp = parallel["fsdp"]
    if fsdp > 1 and accelerator != "gpu":
        raise ConfigError(f"parallel.fsdp: {fsdp} needs trainer.accelerator=gpu (FSDP runs on GPUs only)")
    if world_size % fsdp:
        raise ConfigError(f"parallel.fsdp: {fsdp} does not divide the world size {world_size}")
    data = parallel["data"]
    if data == -1:
        return world_size // fsdp
    if data * fsdp != world_size:
        raise ConfigError(f"parallel.data: {data} x parallel.fsdp {fsdp} != the world size {world_size}")
    return data
