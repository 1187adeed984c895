"""The registry of named health checks, and the one way they run.

HyperPod's deep health checks and NHC both come down to a list of named tests, each with
a threshold, each giving pass or fail with the figure it saw. Here a check is a function
registered with `@check(name, level, description, threshold)`; it returns one
`CheckResult` per thing it looked at (a path, a GPU), which crosses process boundaries as
JSON. Levels: `quick` (seconds; fit for a Prolog or a HealthCheckProgram) and `full`
(minutes; the node to itself). A check that has nothing to look at says `skip` and why.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

from pitstop.hooks.config import HooksConfig, this_node

LEVELS = ("quick", "full")
STATUSES = ("pass", "warn", "fail", "skip")
CRASH_STATUS = {"quick": "warn", "full": "fail"}  # what a check that raises counts as
# The modules whose import registers checks; imported on first use.
CHECK_MODULES = ("pitstop.hooks.checks_quick", "pitstop.hooks.checks_full")


@dataclass
class CheckResult:
    name: str
    level: str
    status: str  # pass | warn | fail | skip
    value: Any = None
    threshold: Any = None
    unit: str = ""
    message: str = ""
    device: str = ""  # gpu0, /scratch, "" for the node
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CheckResult":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class CheckContext:
    """What a check may read: the settings, this node's name, test knobs from the environment."""

    config: HooksConfig
    node: str = field(default_factory=this_node)
    env: Mapping[str, str] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # one NVML session, one thresholds table

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


CheckFunc = Callable[[CheckContext], "CheckResult | Iterable[CheckResult]"]


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    description: str
    threshold: Callable[[HooksConfig], str]
    func: CheckFunc

    def result(self, status: str, value: Any = None, threshold: Any = None, unit: str = "",
               message: str = "", device: str = "") -> CheckResult:
        return CheckResult(self.name, self.level, status, value, threshold, unit, message, device)


REGISTRY: dict[str, Check] = {}


def check(name: str, level: str, description: str,
          threshold: str | Callable[[HooksConfig], str] = "") -> Callable[[CheckFunc], CheckFunc]:
    """Register a check. `threshold` is a text or a function of the settings, for `check list`."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")

    def register(func: CheckFunc) -> CheckFunc:
        if name in REGISTRY:
            raise ValueError(f"check {name!r} registered twice")
        shown = threshold if callable(threshold) else (lambda _config, text=threshold: text)
        REGISTRY[name] = Check(name, level, description, shown, func)
        return func

    return register


def registered() -> dict[str, Check]:
    for module in CHECK_MODULES:
        importlib.import_module(module)
    return REGISTRY


def checks_for(level: str) -> list[Check]:
    """The checks a level runs: `full` runs the quick ones first (a node without its GPUs
    need not be loaded to find out)."""
    wanted = {"quick": ("quick",), "full": ("quick", "full")}[level]
    return [c for c in registered().values() if c.level in wanted]


def run_check(chk: Check, ctx: CheckContext) -> list[CheckResult]:
    started = time.monotonic()
    try:
        produced = chk.func(ctx)
        results = [produced] if isinstance(produced, CheckResult) else list(produced)
    except Exception as exc:
        # A quick check runs before every job: a bug in it must not drain the cluster, so it
        # warns. A full check decides whether a fenced node goes back: what could not be
        # measured is not proven good, so it fails.
        status = CRASH_STATUS[chk.level]
        results = [chk.result(status, message=f"the check itself failed: {type(exc).__name__}: {exc}")]
    elapsed = time.monotonic() - started
    for result in results:
        result.seconds = round(elapsed / max(len(results), 1), 3)
    return results


def run_level(level: str, ctx: CheckContext, only: Iterable[str] = ()) -> list[CheckResult]:
    names = set(only)
    results: list[CheckResult] = []
    for chk in checks_for(level):
        if not names or chk.name in names:
            results += run_check(chk, ctx)
    return results


def overall(results: Iterable[CheckResult]) -> str:
    """fail if any failed, else warn if any warned, else pass (skips count for nothing)."""
    statuses = {r.status for r in results}
    return next((s for s in ("fail", "warn") if s in statuses), "pass")


def failures(results: Iterable[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "fail"]


def summary(results: Iterable[CheckResult]) -> str:
    """One line for a Slurm reason: the failed checks and what they saw."""
    parts = []
    for r in failures(results):
        where = f" {r.device}" if r.device else ""
        parts.append(f"{r.name}{where}: {r.message}" if r.message else f"{r.name}{where}")
    return "; ".join(parts)
