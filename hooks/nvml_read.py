"""NVML for the quick check: one snapshot of every GPU, judged by pure functions.

The read is the agent's (`pitstop.daemon.nvml.read_gpu`), so a Prolog and the agent see
the same counters under the same names; the quick check reads it once, between an
nvmlInit and an nvmlShutdown, where the agent keeps NVML open. Where there is no NVIDIA
driver, `snapshot` says why and every GPU check skips.
"""

from __future__ import annotations

from dataclasses import dataclass

from pitstop.daemon.nvml import GpuReading, read_gpu


@dataclass
class NvmlSnapshot:
    """Either the GPUs' counters, or why NVML could not be read (`unavailable`)."""

    gpus: list[GpuReading]
    unavailable: str = ""
    driver_missing: bool = False  # no library or no driver: nothing to check, not a fault


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
        gpus = [read_gpu(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        return NvmlSnapshot(gpus)
    except pynvml.NVMLError as exc:
        return NvmlSnapshot([], f"NVML failed while reading: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


# --- pure judgements: (status, message) from one GPU's counters ------------------------

def judge_dbe(gpu: GpuReading) -> tuple[str, str]:
    if gpu.ecc_dbe_volatile is None:
        return "skip", "volatile ECC counter not reported (ECC off or unsupported)"
    if gpu.ecc_dbe_volatile > 0:
        return "fail", f"{gpu.ecc_dbe_volatile} volatile double-bit ECC error(s)"
    return "pass", "no volatile double-bit ECC errors"


def judge_remap(gpu: GpuReading) -> tuple[str, str]:
    if gpu.row_remap_failure is None:
        return "skip", "row remapping not reported (pre-Ampere GPU?)"
    if gpu.row_remap_failure:
        return "fail", "row remapping failed: replace the GPU"
    if gpu.row_remap_pending:
        return "fail", "row remap pending: reset or reboot to apply it"
    return "pass", "no row remap pending or failed"


def judge_retired(gpu: GpuReading) -> tuple[str, str]:
    if gpu.retired_pages_pending is None:
        return "skip", "page retirement not reported"
    if gpu.retired_pages_pending:
        return "fail", "retired pages pending: reboot to retire them"
    return "pass", "no retired pages pending"


def judge_pcie(gpu: GpuReading) -> tuple[str, str]:
    if gpu.pcie_width is None or gpu.pcie_width_max is None:
        return "skip", "PCIe link not reported"
    if gpu.pcie_width < gpu.pcie_width_max:
        return "fail", f"PCIe link x{gpu.pcie_width} below its maximum x{gpu.pcie_width_max}"
    if gpu.pcie_gen is not None and gpu.pcie_gen_max is not None and gpu.pcie_gen < gpu.pcie_gen_max:
        # an idle GPU drops its link generation to save power: worth a look, not a drain
        return "warn", f"PCIe gen{gpu.pcie_gen} below gen{gpu.pcie_gen_max} (normal at idle)"
    return "pass", f"PCIe gen{gpu.pcie_gen} x{gpu.pcie_width}"
