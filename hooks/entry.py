"""The Slurm entry points: Prolog, Epilog and HealthCheckProgram.

Slurm runs these with a bare environment (no PATH; the HealthCheckProgram gets not even
SLURM_CONF) and kills a HealthCheckProgram after 60 s, so each runs the quick checks only
(well under a second plus Python's start) and reads nothing it does not need. A failing
Prolog drains its node with a pitstop reason and exits non-zero, so Slurm puts the job
back in the queue (with `SchedulerParameters=nohold_on_prolog_fail`, unheld, to run on
another node). The Epilog kills accelerator processes the job left behind and, after a
failed job, runs the quick checks. The HealthCheckProgram drains on failure and resumes
only what a quick check fenced.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping, TextIO

from pitstop.hooks import fencing
from pitstop.hooks.checks import CheckContext, CheckResult, failures, run_level, summary
from pitstop.hooks.config import HooksConfig
from pitstop.slurm import Slurm, SlurmError


@dataclass
class HookRun:
    """What a hook saw and did, for its log line and for tests."""

    hook: str
    node: str
    results: list[CheckResult] = field(default_factory=list)
    action: str = "none"
    reason: str = ""
    exit_code: int = 0
    notes: list[str] = field(default_factory=list)

    def log_line(self) -> str:
        failed = [r for r in self.results if r.status == "fail"]
        verdict = "fail" if failed else "pass"
        text = f"pitstop {self.hook} on {self.node}: quick check {verdict}"
        if self.action != "none":
            text += f"; {self.action}"
        if self.reason:
            text += f" ({self.reason})"
        return "; ".join([text, *self.notes])


def _quick(config: HooksConfig, node: str, env: Mapping[str, str]) -> list[CheckResult]:
    return run_level("quick", CheckContext(config, node=node, env=env))


def _node_or_none(slurm: Slurm, node: str, run: HookRun):
    try:
        return slurm.node(node)
    except SlurmError as exc:
        run.notes.append(f"could not read the node from Slurm: {exc}")
        return None


def _act(slurm: Slurm, run: HookRun) -> None:
    try:
        fencing.apply(slurm, run.node, run.action, run.reason)
    except SlurmError as exc:
        run.notes.append(f"{run.action} failed: {exc}")


def prolog(config: HooksConfig, node: str, slurm: Slurm, env: Mapping[str, str]) -> HookRun:
    run = HookRun("prolog", node, _quick(config, node, env))
    failed = bool(failures(run.results))
    if failed:
        current = _node_or_none(slurm, node, run)
        run.action = fencing.prolog_action(current, True)
        run.reason = fencing.quick_reason("prolog", summary(run.results))
        _act(slurm, run)
        run.exit_code = 1  # Slurm requeues the job and keeps it off this node
    return run


def job_failed(env: Mapping[str, str]) -> bool:
    """From the Epilog's environment: SLURM_JOB_EXIT_CODE2 is `exit:signal` (22.05 and
    later), SLURM_JOB_EXIT_CODE the raw wait status."""
    pair = env.get("SLURM_JOB_EXIT_CODE2", "")
    if ":" in pair:
        code, _, sig = pair.partition(":")
        return (code.strip() not in ("", "0")) or (sig.strip() not in ("", "0"))
    raw = env.get("SLURM_JOB_EXIT_CODE", "0").strip()
    return raw not in ("", "0")


def job_gpu_indexes(env: Mapping[str, str]) -> list[int]:
    """SLURM_JOB_GPUS (`0,2`) as Slurm gives the Prolog and Epilog."""
    out = []
    for part in env.get("SLURM_JOB_GPUS", "").split(","):
        if part.strip().isdigit():
            out.append(int(part))
    return out


def stray_gpu_pids(indexes: list[int]) -> tuple[list[int], str]:
    """Processes NVML still sees on this job's GPUs; ("", why) where NVML cannot tell."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises its own error classes, or ImportError
        return [], f"stray-process cleanup skipped: NVML unavailable ({exc})"
    try:
        pids = set()
        for index in indexes:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                pids.add(proc.pid)
        return sorted(pids), ""
    finally:
        pynvml.nvmlShutdown()


def kill_strays(pids: list[int], kill: Callable[[int, int], None] = os.kill) -> list[int]:
    killed = []
    for pid in pids:
        if pid in (os.getpid(), 1):
            continue
        try:
            kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
    return killed


def epilog(config: HooksConfig, node: str, slurm: Slurm, env: Mapping[str, str]) -> HookRun:
    run = HookRun("epilog", node)
    indexes = job_gpu_indexes(env)
    if indexes:
        pids, why = stray_gpu_pids(indexes)
        if why:
            run.notes.append(why)
        elif pids:
            run.notes.append(f"killed stray GPU processes {kill_strays(pids)}")
    if not job_failed(env):
        return run
    run.results = _quick(config, node, env)
    if failures(run.results):
        current = _node_or_none(slurm, node, run)
        run.action = fencing.prolog_action(current, True)
        run.reason = fencing.quick_reason("epilog", summary(run.results))
        _act(slurm, run)
    return run  # exit 0: the node is drained with our reason, not Slurm's "Epilog error"


def healthcheck(config: HooksConfig, node: str, slurm: Slurm, env: Mapping[str, str]) -> HookRun:
    run = HookRun("healthcheck", node, _quick(config, node, env))
    failed = bool(failures(run.results))
    current = _node_or_none(slurm, node, run)
    if current is None:
        run.exit_code = 1 if failed else 0
        return run
    run.action = fencing.healthcheck_action(current, failed)
    if run.action == "drain":
        run.reason = fencing.quick_reason("healthcheck", summary(run.results))
    _act(slurm, run)
    run.exit_code = 1 if failed else 0
    return run


HOOKS = {"prolog": prolog, "epilog": epilog, "healthcheck": healthcheck}


def report(run: HookRun, stream: TextIO = sys.stderr) -> None:
    for result in run.results:
        if result.status == "fail":
            where = f" {result.device}" if result.device else ""
            print(f"pitstop {run.hook}: FAIL {result.name}{where}: {result.message}", file=stream)
    print(run.log_line(), file=stream)
