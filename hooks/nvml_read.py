"""A thin NVML read for the quick check: the few counters that decide whether a GPU may
take a job, read once, judged by pure functions.

The agent reads far more (and keeps reading); a Prolog needs one snapshot in well under a
second. Where there is no NVIDIA driver, `open_nvml` says why and every GPU check skips.
(The agent's `pitstop.daemon.nvml.read_gpu` reads the same counters; one reader in the core
would serve both.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class GpuCounters:
    index: int
    name: str = ""
    dbe_volatile: int | None = None
    remap_pending: bool | None = None
    remap_failed: bool | None = None
    retired_pending: bool | None = None
    pcie_gen: int | None = None
    pcie_gen_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None

    @property
    def device(self) -> str:
        return f"gpu{self.index}"


@dataclass
class NvmlSnapshot:
    """Either the GPUs' counters, or why NVML could not be read (`unavailable`)."""

    gpus: list[GpuCounters]
    unavailable: str = ""
    driver_missing: bool = False  # no library or no driver: nothing to check, not a fault


def _read(fn: Callable[..., Any], *args: Any) -> Any:
    import pynvml
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def read_counters(index: int, handle: Any) -> GpuCounters:
    import pynvml
    name = _read(pynvml.nvmlDeviceGetName, handle) or ""
    remap = _read(pynvml.nvmlDeviceGetRemappedRows, handle)  # (corr, uncorr, pending, failed)
    retired = _read(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
    return GpuCounters(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        dbe_volatile=_read(pynvml.nvmlDeviceGetTotalEccErrors, handle,
                           pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
        remap_pending=bool(remap[2]) if remap else None,
        remap_failed=bool(remap[3]) if remap else None,
        retired_pending=None if retired is None else bool(retired),
        pcie_gen=_read(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
        pcie_gen_max=_read(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
        pcie_width=_read(pynvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
        pcie_width_max=_read(pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
    )


def snapshot() -> NvmlSnapshot:
    try:
        import pynvml
    except ImportError:
        return NvmlSnapshot([], "pynvml is not installed", driver_missing=True)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        missing = isinstance(exc, (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded))
        return NvmlSnapshot([], f"NVML did not initialise: {exc}", driver_missing=missing)
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = [read_counters(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        return NvmlSnapshot(gpus)
    except pynvml.NVMLError as exc:
        return NvmlSnapshot([], f"NVML failed while reading: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


# --- pure judgements: (status, message) from one GPU's counters ------------------------

def judge_dbe(gpu: GpuCounters) -> tuple[str, str]:
    if gpu.dbe_volatile is None:
        return "skip", "volatile ECC counter not reported (ECC off or unsupported)"
    if gpu.dbe_volatile > 0:
        return "fail", f"{gpu.dbe_volatile} volatile double-bit ECC error(s)"
    return "pass", "no volatile double-bit ECC errors"


def judge_remap(gpu: GpuCounters) -> tuple[str, str]:
    if gpu.remap_failed is None:
        return "skip", "row remapping not reported (pre-Ampere GPU?)"
    if gpu.remap_failed:
        return "fail", "row remapping failed: replace the GPU"
    if gpu.remap_pending:
        return "fail", "row remap pending: reset or reboot to apply it"
    return "pass", "no row remap pending or failed"


def judge_retired(gpu: GpuCounters) -> tuple[str, str]:
    if gpu.retired_pending is None:
        return "skip", "page retirement not reported"
    if gpu.retired_pending:
        return "fail", "retired pages pending: reboot to retire them"
    return "pass", "no retired pages pending"


def judge_pcie(gpu: GpuCounters) -> tuple[str, str]:
    if gpu.pcie_width is None or gpu.pcie_width_max is None:
        return "skip", "PCIe link not reported"
    if gpu.pcie_width < gpu.pcie_width_max:
        return "fail", f"PCIe link x{gpu.pcie_width} below its maximum x{gpu.pcie_width_max}"
    if gpu.pcie_gen is not None and gpu.pcie_gen_max is not None and gpu.pcie_gen < gpu.pcie_gen_max:
        # an idle GPU drops its link generation to save power: worth a look, not a drain
        return "warn", f"PCIe gen{gpu.pcie_gen} below gen{gpu.pcie_gen_max} (normal at idle)"
    return "pass", f"PCIe gen{gpu.pcie_gen} x{gpu.pcie_width}"
