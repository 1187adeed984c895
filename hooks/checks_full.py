"""The full checks: real load on every device, minutes on a node that has nothing else.

A GPU can pass every counter and still compute wrong numbers (silent data corruption),
run slow from a degraded HBM stack, or drag a collective over a bad NVLink. So each
device runs a sustained float32 matmul checked against a float64 reference and against
the other devices' results, copies a large tensor for memory bandwidth, and the node's
devices run an all-reduce for bus bandwidth (nccl-tests' busbw). Limits come per device
model from `thresholds.yaml`. On a CPU-only node the same checks run on the CPU
(`cpu_devices` logical devices) and gloo, so every line here runs in the tests.

Test knob: PITSTOP_TEST_CORRUPT_DEVICE=<index> perturbs that device's matmul result, as
a corrupting unit would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitstop.hooks.checks import REGISTRY, CheckContext, CheckResult, check
from pitstop.hooks.thresholds import ModelThresholds, for_model, load_thresholds

CORRUPT_ENV = "PITSTOP_TEST_CORRUPT_DEVICE"
ALLREDUCE_TIMEOUT_S = 300.0


@dataclass
class Devices:
    model: str
    names: list[str]  # gpu0, gpu1 … or cpu0, cpu1 …
    torch_devices: list[Any]
    distinct_memory: list[int]  # indexes whose memory is their own (one for all CPU devices)


def devices(ctx: CheckContext) -> Devices:
    def find() -> Devices:
        import torch
        if torch.cuda.is_available() and torch.cuda.device_count():
            count = torch.cuda.device_count()
            model = ctx.config.device_model or torch.cuda.get_device_name(0)
            return Devices(model, [f"gpu{i}" for i in range(count)],
                           [torch.device("cuda", i) for i in range(count)], list(range(count)))
        count = max(ctx.config.full.cpu_devices, 1)
        return Devices(ctx.config.device_model or "cpu", [f"cpu{i}" for i in range(count)],
                       [torch.device("cpu")] * count, [0])
    return ctx.once("devices", find)


def thresholds(ctx: CheckContext) -> ModelThresholds:
    table = ctx.once("thresholds", lambda: load_thresholds(ctx.config.thresholds_path))
    return for_model(table, devices(ctx).model)


def _limit_text(metric: str):
    return lambda config: _row_text(config, metric)


def _row_text(config, metric: str) -> str:
    try:
        table = load_thresholds(config.thresholds_path)
    except ValueError as exc:
        return f"unreadable: {exc}"
    model = config.device_model or _nvml_model() or "cpu"
    return f"{for_model(table, model).limits[metric]} ({model}; per model in {config.thresholds_path.name})"


def _nvml_model() -> str:
    """GPU 0's name as NVML gives it (the key in thresholds.yaml), or "" without NVML."""
    from pitstop.hooks import nvml_read
    snap = nvml_read.snapshot()
    return snap.gpus[0].name if snap.gpus else ""


# --- matmul: throughput and silent data corruption ------------------------------------

@dataclass
class MatmulRun:
    device: str
    gflops: float
    iterations: int
    result: Any  # the last product, on the CPU
    stable: bool  # the last product equals the first, bit for bit


def relative_error(result, reference) -> float:
    """max |result − reference| / max |reference|, in float64."""
    diff = (result.double() - reference).abs().max().item()
    scale = reference.abs().max().item() or 1.0
    return diff / scale


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_matmul(torch, device, a_cpu, b_cpu, seconds: float, name: str, corrupt: bool) -> MatmulRun:
    a, b = a_cpu.to(device), b_cpu.to(device)
    n = a.shape[0]
    first = a @ b
    _sync(torch, device)
    iterations, started = 0, time.perf_counter()
    last = first
    while True:
        last = a @ b
        iterations += 1
        if iterations % 4 == 0 or device.type == "cpu":
            _sync(torch, device)
            if time.perf_counter() - started >= seconds:
                break
    elapsed = time.perf_counter() - started
    result = last.cpu()
    if corrupt:
        result = result.clone()
        result[n // 2, n // 3] += result.abs().max() + 1.0
    return MatmulRun(name, 2 * n**3 * iterations / elapsed / 1e9, iterations, result,
                     bool(torch.equal(first.cpu(), last.cpu())))


def matmul_runs(ctx: CheckContext) -> tuple[list[MatmulRun], Any]:
    def run() -> tuple[list[MatmulRun], Any]:
        import torch
        found = devices(ctx)
        n = ctx.config.full.matmul_size
        generator = torch.Generator().manual_seed(1234)
        a = torch.randn(n, n, generator=generator, dtype=torch.float32)
        b = torch.randn(n, n, generator=generator, dtype=torch.float32)
        reference = a.double() @ b.double()
        corrupt = ctx.env.get(CORRUPT_ENV)
        runs = [run_matmul(torch, dev, a, b, ctx.config.full.matmul_seconds, name,
                           corrupt is not None and corrupt.strip() == str(i))
                for i, (name, dev) in enumerate(zip(found.names, found.torch_devices))]
        return runs, reference
    return ctx.once("matmul", run)


@check("matmul", "full", "Sustained float32 matmul throughput on every device (GFLOP/s)",
       _limit_text("matmul_gflops"))
def matmul(ctx: CheckContext) -> list[CheckResult]:
    me = REGISTRY["matmul"]
    limit = thresholds(ctx).limits["matmul_gflops"]
    runs, _ = matmul_runs(ctx)
    return [me.result(limit.judge(r.gflops), round(r.gflops, 2), str(limit), "GFLOP/s",
                      f"{r.gflops:.1f} GFLOP/s over {r.iterations} matmuls", device=r.device)
            for r in runs]


def judge_sdc(errors_vs_reference: list[float], errors_vs_first: list[float], stable: list[bool],
              tolerance: float) -> list[tuple[str, str]]:
    """Per device: fail when its product strays from float64, from device 0's, or from its
    own first product (a unit that flips bits under sustained load)."""
    out = []
    for ref_err, peer_err, same in zip(errors_vs_reference, errors_vs_first, stable):
        problems = []
        if ref_err > tolerance:
            problems.append(f"relative error {ref_err:.2e} against float64 exceeds {tolerance:.0e}")
        if peer_err > tolerance:
            problems.append(f"differs from device 0 by {peer_err:.2e}")
        if not same:
            problems.append("its product changed between iterations")
        out.append(("fail", "; ".join(problems)) if problems else
                   ("pass", f"relative error {ref_err:.2e} against float64"))
    return out


@check("sdc", "full", "Matmul results agree with float64 and across devices (silent data corruption)",
       lambda c: "relative error ≤ sdc_tolerance per model")
def sdc(ctx: CheckContext) -> list[CheckResult]:
    me = REGISTRY["sdc"]
    tolerance = thresholds(ctx).sdc_tolerance
    runs, reference = matmul_runs(ctx)
    first = runs[0].result.double()
    ref_errors = [relative_error(r.result, reference) for r in runs]
    peer_errors = [0.0] + [relative_error(r.result, first) for r in runs[1:]]
    verdicts = judge_sdc(ref_errors, peer_errors, [r.stable for r in runs], tolerance)
    return [me.result(status, float(f"{err:.3e}"), tolerance, "relative error", message, device=r.device)
            for r, err, (status, message) in zip(runs, ref_errors, verdicts)]


# --- memory bandwidth -----------------------------------------------------------------

def copy_bandwidth(torch, device, size_bytes: int, iterations: int) -> float:
    """GB/s of `dst.copy_(src)`, counting the bytes read and the bytes written."""
    elements = max(size_bytes // 4, 1)
    src = torch.ones(elements, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(torch, device)
    started = time.perf_counter()
    for _ in range(iterations):
        dst.copy_(src)
    _sync(torch, device)
    return 2 * elements * 4 * iterations / (time.perf_counter() - started) / 1e9


@check("memory_bandwidth", "full", "Device memory copy bandwidth (GB/s, read + write)",
       _limit_text("memory_bandwidth_gbs"))
def memory_bandwidth(ctx: CheckContext) -> list[CheckResult]:
    import torch
    me = REGISTRY["memory_bandwidth"]
    found = devices(ctx)
    limit = thresholds(ctx).limits["memory_bandwidth_gbs"]
    settings = ctx.config.full
    results = []
    for index in found.distinct_memory:
        gbs = copy_bandwidth(torch, found.torch_devices[index], settings.bandwidth_mib << 20,
                             settings.bandwidth_iterations)
        name = found.names[index] if len(found.distinct_memory) > 1 else found.names[index].rstrip("0123456789")
        results.append(me.result(limit.judge(gbs), round(gbs, 2), str(limit), "GB/s",
                                 f"{gbs:.1f} GB/s copying {settings.bandwidth_mib} MiB", device=name))
    return results


# --- all-reduce across the node's devices ---------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_allreduce(processes: int, size_bytes: int, iterations: int,
                    timeout: float = ALLREDUCE_TIMEOUT_S) -> dict:
    """Run one all-reduce worker per device on this node and return rank 0's figures."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="pitstop-allreduce-") as out:
        workers = []
        for rank in range(processes):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "pitstop.hooks.allreduce", "--out", out,
                 "--size-bytes", str(size_bytes), "--iterations", str(iterations),
                 "--timeout", str(int(timeout))],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        deadline = time.monotonic() + timeout
        outputs = []
        try:
            for worker in workers:
                output, _ = worker.communicate(timeout=max(deadline - time.monotonic(), 1))
                outputs.append(output)
        except subprocess.TimeoutExpired:
            for worker in workers:
                worker.kill()
                worker.wait()
            raise RuntimeError(f"all-reduce workers did not finish within {timeout:.0f}s") from None
        failed = [(i, w.returncode, o) for i, (w, o) in enumerate(zip(workers, outputs)) if w.returncode]
        if failed:
            rank, code, output = failed[0]
            raise RuntimeError(f"all-reduce rank {rank} exited {code}: {output.strip()[-300:]}")
        return json.loads(Path(out, "rank-0.json").read_text())["all"]


@check("allreduce", "full", "All-reduce bus bandwidth across the node's devices (GB/s busbw)",
       _limit_text("allreduce_busbw_gbs"))
def allreduce(ctx: CheckContext) -> CheckResult:
    me = REGISTRY["allreduce"]
    found = devices(ctx)
    settings = ctx.config.full
    processes = settings.allreduce_processes or (len(found.names) if found.model != "cpu" else 2)
    if processes < 2:
        return me.result("skip", message="one device: nothing to all-reduce across")
    limit = thresholds(ctx).limits["allreduce_busbw_gbs"]
    figures = local_allreduce(processes, settings.allreduce_mib << 20, settings.allreduce_iterations)
    busbw = figures["busbw_gbs"]
    return me.result(limit.judge(busbw), busbw, str(limit), "GB/s",
                     f"busbw {busbw:.2f} GB/s (algbw {figures['algbw_gbs']:.2f}) over {processes} "
                     f"ranks, {settings.allreduce_mib} MiB")
