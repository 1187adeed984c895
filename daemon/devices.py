"""The per-device table a node's state file carries, for the TUI's node detail.

The agent already holds each device's last reading (NVML, neuron-monitor) and its open
findings; this lays them out as one row a device, the shape documented in
`pitstop.daemon.health` under `telemetry.devices`. Pure: the agent passes what it read.
Where no driver reports (the testbed, a node without NVML), the device files are the
rows, so the count the TUI shows is still the node's own.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from pitstop.daemon.host import device_index
from pitstop.model import FENCE_CLASSES

FENCING_CLASSES = set(FENCE_CLASSES)


def device_rows(*, gpus: Sequence[Any] = (), neuron: Any = None, paths: Iterable[str] = (),
                findings: Iterable[Mapping[str, Any]] = (), path_kind: str = "gpu") -> list[dict[str, Any]]:
    """One row a device: {"device", "kind", "healthy", "finding", "readings"}.

    `gpus` are GpuReadings, `neuron` a NeuronReport, `paths` the accelerator device files
    (used only when no driver reported), `findings` the state file's open findings."""
    worst = _worst_by_device(findings)
    rows: list[dict[str, Any]] = []
    for gpu in gpus:
        rows.append(_row(gpu.device, "gpu", gpu.to_dict(), worst))
    if neuron is not None:
        for device in neuron.devices:
            readings = {"index": device.index, "mem_ecc_corrected": device.mem_ecc_corrected,
                        "mem_ecc_uncorrected": device.mem_ecc_uncorrected,
                        "sram_ecc_corrected": device.sram_ecc_corrected,
                        "sram_ecc_uncorrected": device.sram_ecc_uncorrected}
            rows.append(_row(device.device, "neuron", readings, worst))
    if not rows:
        prefix = "gpu" if path_kind == "gpu" else "nd"
        for path in paths:
            rows.append(_row(f"{prefix}{device_index(path)}", path_kind, {"path": path}, worst))
    return rows


def _row(device: str, kind: str, readings: dict[str, Any], worst: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    finding = worst.get(device)
    return {"device": device, "kind": kind, "healthy": finding is None or
            finding.get("action_class") not in FENCING_CLASSES,
            "finding": finding.get("message") if finding else None, "readings": readings}


_SEVERITY = {"replace": 5, "reboot": 4, "down": 3, "drain": 2, "watch": 1}


def _worst_by_device(findings: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    worst: dict[str, Mapping[str, Any]] = {}
    for finding in findings:
        device = finding.get("device")
        if not device:
            continue
        rank = _SEVERITY.get(finding.get("action_class", ""), 0)
        if device not in worst or rank >= _SEVERITY.get(worst[device].get("action_class", ""), 0):
            worst[device] = finding
    return worst
