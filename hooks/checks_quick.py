"""The quick checks: seconds in all, so a Prolog can run them before every job.

Each one reads one thing (NVML, a device glob, statvfs, /proc/self/mounts, the agent's
/status, the clock) and decides with a pure function, so every rule is tested on plain
values. Nothing here imports torch.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import threading
import urllib.error
import urllib.request

from pitstop.hooks.checks import REGISTRY, CheckContext, CheckResult, check
from pitstop.hooks.config import Amount, human_bytes
from pitstop.hooks import nvml_read

CLOCK_TIMEOUT_S = 3.0
AGENT_TIMEOUT_S = 2.0
NVML_TIMEOUT_S = 15.0


def _nvml(ctx: CheckContext) -> nvml_read.NvmlSnapshot:
    if ctx.config.nvml == "off":
        return ctx.once("nvml", lambda: nvml_read.NvmlSnapshot([], "NVML is off in the settings",
                                                               driver_missing=True))
    return ctx.once("nvml", lambda: snapshot_within(nvml_read.snapshot, NVML_TIMEOUT_S))


def snapshot_within(read, timeout: float) -> nvml_read.NvmlSnapshot:
    """NVML hangs on some dying GPUs (nvidia-smi does too). A HealthCheckProgram that hangs
    is killed at 60 s and drains nothing, so a read that takes too long is itself a
    failure, reported in time. The stuck thread is left behind; the process exits soon."""
    box: list[nvml_read.NvmlSnapshot] = []
    reader = threading.Thread(target=lambda: box.append(read()), name="nvml-read", daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        return nvml_read.NvmlSnapshot([], f"NVML did not answer within {timeout:g}s (a hung GPU?)")
    return box[0]


def count_devices(pattern: str) -> int:
    """Character devices matching a glob (`/dev/nvidia[0-9]*`), as the driver made them."""
    found = 0
    for path in glob.glob(pattern):
        try:
            if stat.S_ISCHR(os.stat(path).st_mode):
                found += 1
        except OSError:
            continue
    return found


@check("nvml", "quick", "NVML initialises and lists the GPUs",
       lambda c: {"auto": "initialises (skip without a driver)", "required": "initialises",
                  "off": "off"}[c.nvml])
def nvml_initialises(ctx: CheckContext) -> CheckResult:
    me = REGISTRY["nvml"]
    snap = _nvml(ctx)
    if not snap.unavailable:
        return me.result("pass", len(snap.gpus), unit="GPUs", message=f"{len(snap.gpus)} GPU(s) visible")
    if snap.driver_missing and ctx.config.nvml != "required":
        return me.result("skip", message=snap.unavailable)
    return me.result("fail", message=snap.unavailable)


def judge_count(found: int, expected: int | None, what: str) -> tuple[str, str]:
    if expected is None:
        return "skip", f"no expected {what} count in the settings"
    if found < expected:
        return "fail", f"{found} {what}(s) found, {expected} expected"
    return "pass", f"{found} {what}(s) found"


@check("gpu_count", "quick", "GPUs present against the expected count",
       lambda c: f"≥{c.expected_gpus}" if c.expected_gpus is not None else "not set")
def gpu_count(ctx: CheckContext) -> CheckResult:
    me = REGISTRY["gpu_count"]
    snap = _nvml(ctx)
    found = len(snap.gpus) if not snap.unavailable else count_devices(ctx.config.accelerator_glob)
    status, message = judge_count(found, ctx.config.expected_gpus, "GPU")
    if status != "skip" and snap.unavailable:
        message += f" (device files {ctx.config.accelerator_glob})"
    return me.result(status, found, ctx.config.expected_gpus, "GPUs", message)


def _per_gpu(name: str, judge, ctx: CheckContext) -> list[CheckResult]:
    me = REGISTRY[name]
    snap = _nvml(ctx)
    if snap.unavailable:
        return [me.result("skip", message=snap.unavailable)]
    if not snap.gpus:
        return [me.result("skip", message="NVML lists no GPUs")]
    results = []
    for gpu in snap.gpus:
        status, message = judge(gpu)
        results.append(me.result(status, message=message, device=gpu.device))
    return results


@check("ecc_dbe", "quick", "No volatile double-bit ECC errors", "0")
def ecc_dbe(ctx: CheckContext) -> list[CheckResult]:
    return _per_gpu("ecc_dbe", nvml_read.judge_dbe, ctx)


@check("row_remap", "quick", "No row remap pending or failed", "none")
def row_remap(ctx: CheckContext) -> list[CheckResult]:
    return _per_gpu("row_remap", nvml_read.judge_remap, ctx)


@check("retired_pages", "quick", "No retired pages pending", "none")
def retired_pages(ctx: CheckContext) -> list[CheckResult]:
    return _per_gpu("retired_pages", nvml_read.judge_retired, ctx)


@check("pcie_link", "quick", "PCIe link at its maximum width (generation warns)", "max width")
def pcie_link(ctx: CheckContext) -> list[CheckResult]:
    return _per_gpu("pcie_link", nvml_read.judge_pcie, ctx)


@check("neuron_count", "quick", "Neuron devices present against the expected count",
       lambda c: f"≥{c.expected_neuron_devices}" if c.expected_neuron_devices is not None else "not set")
def neuron_count(ctx: CheckContext) -> CheckResult:
    me = REGISTRY["neuron_count"]
    found = count_devices(ctx.config.neuron_glob)
    expected = ctx.config.expected_neuron_devices
    if expected is None and not found:
        return me.result("skip", 0, message=f"no Neuron devices ({ctx.config.neuron_glob})")
    status, message = judge_count(found, expected, "Neuron device")
    return me.result(status, found, expected, "devices", message)


def judge_free(free: int, total: int, limit: Amount) -> tuple[str, str]:
    need = limit.limit_bytes(total)
    share = f"{100 * free / total:.1f}%" if total else "?"
    if free < need:
        return "fail", f"{human_bytes(free)} free ({share}), below {limit}"
    return "pass", f"{human_bytes(free)} free ({share})"


@check("disk_free", "quick", "Free space on scratch and checkpoint paths",
       lambda c: ", ".join(f"{p} ≥{a}" for p, a in c.min_free.items()) or "no paths set")
def disk_free(ctx: CheckContext) -> list[CheckResult]:
    me = REGISTRY["disk_free"]
    if not ctx.config.min_free:
        return [me.result("skip", message="no paths in min_free")]
    results = []
    for path, limit in ctx.config.min_free.items():
        try:
            usage = shutil.disk_usage(path)
        except OSError as exc:
            results.append(me.result("fail", threshold=str(limit), message=f"cannot read: {exc.strerror}",
                                     device=path))
            continue
        status, message = judge_free(usage.free, usage.total, limit)
        results.append(me.result(status, usage.free, str(limit), "bytes", message, device=path))
    return results


def mounted_points(mounts_text: str) -> set[str]:
    """Mount points from /proc/self/mounts (octal escapes such as `\\040` decoded)."""
    points = set()
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            points.add(parts[1].encode().decode("unicode_escape"))
    return points


@check("mounts", "quick", "Required mounts present",
       lambda c: ", ".join(c.mounts) or "none required")
def mounts(ctx: CheckContext) -> list[CheckResult]:
    me = REGISTRY["mounts"]
    if not ctx.config.mounts:
        return [me.result("skip", message="no required mounts in the settings")]
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
        points = mounted_points(fh.read())
    return [me.result("pass" if os.path.normpath(m) in points else "fail",
                      message="mounted" if os.path.normpath(m) in points else "not mounted", device=m)
            for m in ctx.config.mounts]


@check("agent", "quick", "The pitstop agent answers on /status",
       lambda c: f"{c.agent_host}:{c.agent_port}/status answers" if c.agent_port else "not set")
def agent_alive(ctx: CheckContext) -> CheckResult:
    me = REGISTRY["agent"]
    if not ctx.config.agent_port:
        return me.result("skip", message="no agent_port in the settings")
    url = f"http://{ctx.config.agent_host}:{ctx.config.agent_port}/status"
    try:
        with urllib.request.urlopen(url, timeout=AGENT_TIMEOUT_S) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return me.result("fail", message=f"{url}: {getattr(exc, 'reason', exc)}")
    if code != 200:
        return me.result("fail", code, 200, message=f"{url} answered HTTP {code}")
    return me.result("pass", code, 200, message=f"{url} answered")


def judge_timedatectl(text: str) -> tuple[str, str]:
    value = text.strip().split("=")[-1]
    if value == "yes":
        return "pass", "NTP synchronised (timedatectl)"
    if value == "no":
        return "warn", "NTP not synchronised (timedatectl)"
    return "skip", f"timedatectl said {text.strip()!r}"


def judge_chronyc(text: str) -> tuple[str, str]:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Leap status":
            if value.strip() == "Normal":
                return "pass", "clock synchronised (chronyc)"
            return "warn", f"chronyc leap status {value.strip()!r}"
    return "skip", "chronyc gave no leap status"


# tool -> (argument list, judge); the first tool that is present and answers decides
CLOCK_TOOLS = (
    ("timedatectl", ["timedatectl", "show", "-p", "NTPSynchronized"], judge_timedatectl),
    ("chronyc", ["chronyc", "-n", "tracking"], judge_chronyc),
)


@check("clock_sync", "quick", "The clock is NTP-synchronised", "synchronised")
def clock_sync(ctx: CheckContext) -> CheckResult:
    me = REGISTRY["clock_sync"]
    if ctx.config.clock_sync == "off":
        return me.result("skip", message="off in the settings")
    tried = []
    for tool, args, judge in CLOCK_TOOLS:
        if shutil.which(tool) is None:
            tried.append(f"{tool} not installed")
            continue
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=CLOCK_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{tool}: {exc}")
            continue
        if proc.returncode != 0:
            said = " ".join((proc.stderr or proc.stdout).split())[:120]
            tried.append(f"{tool}: {said or f'exit {proc.returncode}'}")
            continue
        status, message = judge(proc.stdout)
        if status != "skip":
            return me.result(status, message=message)
        tried.append(message)
    return me.result("skip", message="; ".join(tried))
