"""The resolved recipe's schema as data: every key of docs/recipe-schema.md, its type, its
default.

Composition starts from these defaults, so every key is present in a resolved config,
and checks the result against the same table: an unknown key is an error that suggests
the nearest known one, and a value of the wrong type names the key and the type it needs.
Keys without a default must come from the recipe or its group files.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any, Callable

from pitstop.recipes.yamlmarks import KeyPath

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    kind: str                       # int | float | str | bool | list[str] | list[float]
    default: Any = REQUIRED
    nullable: bool = False
    choices: tuple[str, ...] = ()
    length: int | None = None       # for lists of a fixed length

    def expected(self) -> str:
        text = " | ".join(self.choices) if self.choices else self.kind
        if self.length is not None:
            text = f"{self.kind} of length {self.length}"
        return f"{text} or null" if self.nullable else text


def _opt(kind: str) -> Field:
    return Field(kind, default=None, nullable=True)


Schema = dict[str, "Field | Schema"]

SCHEMA: Schema = {
    "name": Field("str"),
    "description": Field("str"),
    "hardware": Field("str"),
    "task": Field("str", choices=("pretrain", "lora")),
    "model": {
        "family": Field("str", choices=("llama", "mistral", "mixtral")),
        "dim": Field("int"),
        "n_layers": Field("int"),
        "n_heads": Field("int"),
        "n_kv_heads": Field("int"),
        "ffn_dim": Field("int"),
        "vocab_size": Field("int"),
        "max_seq_len": Field("int"),
        "rope_theta": Field("float", default=500000.0),
        "norm_eps": Field("float", default=1.0e-5),
        "n_experts": Field("int", default=0),
        "experts_per_token": Field("int", default=2),
        "sliding_window": _opt("int"),
        "init_from": _opt("str"),
    },
    "lora": {
        "rank": Field("int", default=8),
        "alpha": Field("float", default=16.0),
        "dropout": Field("float", default=0.0),
        "targets": Field("list[str]", default=["wq", "wv"]),
    },
    "data": {
        "source": Field("str", choices=("stdlib", "tokens")),
        "path": _opt("str"),
        "seq_len": Field("int"),
        "micro_batch_size": Field("int", default=8),
        "seed": Field("int", default=1234),
    },
    "optimizer": {
        "lr": Field("float", default=3.0e-3),
        "betas": Field("list[float]", default=[0.9, 0.95], length=2),
        "eps": Field("float", default=1.0e-8),
        "weight_decay": Field("float", default=0.1),
        "grad_clip": Field("float", default=1.0, nullable=True),   # null: no clipping
    },
    "schedule": {
        "warmup_steps": Field("int", default=10),
        "min_lr_ratio": Field("float", default=0.1),
    },
    "trainer": {
        "max_steps": Field("int", default=60),
        "seed": Field("int", default=0),
        "accelerator": Field("str", choices=("cpu", "gpu")),
        "precision": Field("str", default="fp32", choices=("fp32", "bf16")),
        "log_every": Field("int", default=1),
        "tensorboard": Field("bool", default=True),
        "checkpoint": {
            "interval": Field("int", default=10),
            "keep": Field("int", default=3),
            "async": Field("bool", default=True),
        },
        "step_delay": Field("float", default=0.0),
    },
    "parallel": {
        "data": Field("int", default=-1),
        "fsdp": Field("int", default=1),
        "tensor": Field("int", default=1),
        "context": Field("int", default=1),
        "expert": Field("int", default=1),
    },
    "cluster": {
        "nodes": Field("int"),
        "spare_nodes": Field("int", default=0),
        "procs_per_node": Field("int"),
        "gpus_per_node": Field("int", default=0),
        "cpus_per_task": _opt("int"),
        "partition": _opt("str"),
        "reservation": _opt("str"),
        "time": Field("str", default="01:00:00"),
        "exclusive": Field("bool", default=False),
        "requeue": Field("bool", default=True),
        "max_restarts": Field("int", default=10),
        "signal_seconds": Field("int", default=60),
        "rdzv_port": Field("int", default=29500),
        "launcher": Field("str", default="torchrun"),
        "warm_start": Field("bool", default=False),
    },
    "run": {
        "dir": _opt("str"),
        "root": Field("str", default="./runs"),
    },
}


def all_keys(schema: Schema = SCHEMA, prefix: KeyPath = ()) -> list[str]:
    """Every dotted key of the schema, sections included."""
    keys = []
    for name, spec in schema.items():
        keys.append(".".join(prefix + (name,)))
        if isinstance(spec, dict):
            keys += all_keys(spec, prefix + (name,))
    return keys


def defaults(schema: Schema = SCHEMA) -> dict[str, Any]:
    """The nested defaults: every key that has one (sections always present)."""
    found: dict[str, Any] = {}
    for name, spec in schema.items():
        if isinstance(spec, dict):
            found[name] = defaults(spec)
        elif spec.default is not REQUIRED:
            found[name] = copy.deepcopy(spec.default)
    return found


def suggest(dotted: str, candidates: list[str]) -> str:
    """`; did you mean X?` for the nearest candidate, or nothing."""
    parent, _, leaf = dotted.rpartition(".")
    siblings = [c for c in candidates if c.rpartition(".")[0] == parent]
    near = difflib.get_close_matches(leaf, [c.rpartition(".")[2] for c in siblings], n=1)
    if near:
        return f"; did you mean {parent + '.' if parent else ''}{near[0]}?"
    near = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.7)
    return f"; did you mean {near[0]}?" if near else ""


def _check_value(field: Field, value: Any) -> tuple[bool, Any]:
    """(fits, the value normalised: ints become floats where a float is expected)."""
    if value is None:
        return field.nullable, None
    kind = field.kind
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "float":
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        return fits, float(value) if fits else value
    if kind == "str":
        fits = isinstance(value, str) and (not field.choices or value in field.choices)
        return fits, value
    if kind.startswith("list["):
        item = Field(kind[5:-1])
        if not isinstance(value, list):
            return False, value
        if field.length is not None and len(value) != field.length:
            return False, value
        normalised = []
        for element in value:
            fits, element = _check_value(item, element)
            if not fits:
                return False, value
            normalised.append(element)
        return True, normalised
    raise AssertionError(f"unknown schema kind {kind}")


def check_types(cfg: dict[str, Any], origin: Callable[[KeyPath], str],
                missing_hint: Callable[[KeyPath], str] = lambda path: "",
                schema: Schema = SCHEMA, prefix: KeyPath = ()) -> tuple[dict[str, Any], list[str]]:
    """The config in schema order with numbers normalised, and one message per key that
    does not fit.

    `origin(path)` says where a key was set (`file:line: `, `override 'a=b': ` or "").
    """
    problems: list[str] = []
    normalised: dict[str, Any] = {}
    known = all_keys()
    for name, value in cfg.items():
        path = prefix + (str(name),)
        dotted = ".".join(path)
        spec = schema.get(str(name))
        if spec is None:
            problems.append(f"{origin(path)}{dotted}: unknown key{suggest(dotted, known)}")
            continue
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                problems.append(f"{origin(path)}{dotted}: expected a mapping of "
                                f"{', '.join(spec)}, got {_show(value)}")
                continue
            inner, inner_problems = check_types(value, origin, missing_hint, spec, path)
            normalised[str(name)] = inner
            problems += inner_problems
            continue
        fits, value = _check_value(spec, value)
        if not fits:
            problems.append(f"{origin(path)}{dotted}: expected {spec.expected()}, "
                            f"got {_show(value)}")
        normalised[str(name)] = value
    normalised = {name: normalised[name] for name in schema if name in normalised}
    for name, spec in schema.items():
        if name not in cfg:
            path = prefix + (name,)
            what = spec.expected() if isinstance(spec, Field) else "a mapping"
            hint = missing_hint(path) or (
                "; set it in the recipe or one of its group files"
                if isinstance(spec, dict) or spec.default is REQUIRED else "")
            problems.append(f"{'.'.join(path)}: missing (expected {what}){hint}")
    return normalised, problems


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'} {value!r}"
    return f"{type(value).__name__} {value!r}"
