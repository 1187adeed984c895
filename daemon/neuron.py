"""The Neuron source: what AWS Trainium and Inferentia devices report through
`neuron-monitor`, turned into readings and findings.

`neuron-monitor` writes one JSON report per line on stdout (the format of the Neuron
Monitor User Guide: `neuron_runtime_data[].report` for each Neuron application,
`system_data.neuron_hw_counters.neuron_devices[]` for the devices' ECC counters,
`neuron_hardware_info` for the device count). `parse_report` reads one line into a
`NeuronReport`; `findings_from_report` is the pure decision over it; `NeuronMonitor` is
the thin live edge that runs the binary (an argument list, never a shell) and is disabled
with one log line where the binary is absent.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

from pitstop.model import Finding
from pitstop.daemon.conditions import (NOTHING_REPORTED, Condition, Reported, count_low,
                                       report_changes)

log = logging.getLogger(__name__)

SOURCE = "neuron"

# The ECC counters of `neuron_hw_counters`, by the finding code they report under.
ECC_COUNTERS = {
    "mem_uncorrected": "mem_ecc_uncorrected",
    "sram_uncorrected": "sram_ecc_uncorrected",
    "mem_corrected": "mem_ecc_corrected",
    "sram_corrected": "sram_ecc_corrected",
}
UNCORRECTED_CODES = ("mem_uncorrected", "sram_uncorrected")
CORRECTED_CODES = ("mem_corrected", "sram_corrected")


@dataclass
class NeuronDeviceReading:
    """One Neuron device's ECC counters (events since the driver loaded)."""

    index: int
    mem_ecc_corrected: int = 0
    mem_ecc_uncorrected: int = 0
    sram_ecc_corrected: int = 0
    sram_ecc_uncorrected: int = 0

    @property
    def device(self) -> str:
        return f"nd{self.index}"


@dataclass
class NeuronCoreReading:
    """One NeuronCore that a Neuron application had in use during the report's period."""

    index: int
    utilization_pct: float
    runtime_tag: str = ""
    pid: int = 0


@dataclass
class NeuronReport:
    """One `neuron-monitor` report."""

    devices: list[NeuronDeviceReading] = field(default_factory=list)
    cores: list[NeuronCoreReading] = field(default_factory=list)
    device_memory_used_bytes: int = 0  # over every Neuron application
    host_memory_used_bytes: int = 0
    device_count: int | None = None  # neuron_hardware_info.neuron_device_count
    device_type: str = ""
    errors: list[str] = field(default_factory=list)  # the report's own "error" strings


class NeuronParser:
    """Reads `neuron-monitor` lines into reports, counting the lines that are not one."""

    def __init__(self) -> None:
        self.lines = 0
        self.skipped = 0

    def feed(self, line: str) -> NeuronReport | None:
        self.lines += 1
        report = parse_report(line)
        if report is None:
            self.skipped += 1
        return report


def parse_report(line: str) -> NeuronReport | None:
    """One report line, or None when the line is not a `neuron-monitor` report."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not ({"neuron_runtime_data", "system_data",
                                           "neuron_hardware_info"} & data.keys()):
        return None
    report = NeuronReport()
    hardware = _object(data.get("neuron_hardware_info"))
    if isinstance(hardware.get("neuron_device_count"), int):
        report.device_count = hardware["neuron_device_count"]
    report.device_type = str(hardware.get("neuron_device_type", ""))
    _note_error(report, "neuron_hardware_info", hardware)

    counters = _object(_object(data.get("system_data")).get("neuron_hw_counters"))
    _note_error(report, "neuron_hw_counters", counters)
    for device in _list(counters.get("neuron_devices")):
        if not isinstance(device, dict) or not isinstance(device.get("neuron_device_index"), int):
            continue
        report.devices.append(NeuronDeviceReading(
            index=device["neuron_device_index"],
            **{name: _count(device.get(name)) for name in ECC_COUNTERS.values()}))

    for runtime in _list(data.get("neuron_runtime_data")):
        runtime = _object(runtime)
        _note_error(report, f"runtime {runtime.get('pid', '?')}", runtime)
        tag, pid = str(runtime.get("neuron_runtime_tag", "")), _count(runtime.get("pid"))
        runtime_report = _object(runtime.get("report"))
        in_use = _object(_object(runtime_report.get("neuroncore_counters")).get("neuroncores_in_use"))
        for index, core in in_use.items():
            utilization = _object(core).get("neuroncore_utilization")
            if str(index).isdigit() and isinstance(utilization, (int, float)):
                report.cores.append(NeuronCoreReading(int(index), float(utilization), tag, pid))
        used = _object(_object(runtime_report.get("memory_used")).get("neuron_runtime_used_bytes"))
        report.device_memory_used_bytes += _count(used.get("neuron_device"))
        report.host_memory_used_bytes += _count(used.get("host"))
    return report


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _note_error(report: NeuronReport, where: str, group: Mapping[str, Any]) -> None:
    if group.get("error"):
        report.errors.append(f"{where}: {group['error']}")


# ---------------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class NeuronThresholds:
    expected_devices: int | None = None  # None: do not check the count


@dataclass(frozen=True)
class NeuronState:
    """What one report's decisions leave for the next: the corrected-ECC counts last seen
    per (device, code), and the conditions already reported. Start with `NeuronState()`."""

    corrected_seen: Mapping[tuple[str, str], int] = field(
        default_factory=lambda: MappingProxyType({}))
    reported: Reported = field(default_factory=lambda: NOTHING_REPORTED)


def findings_from_report(node: str, report: NeuronReport, previous: NeuronState,
                         thresholds: NeuronThresholds,
                         now: float) -> tuple[list[Finding], NeuronState]:
    """Uncorrected ECC events found as soon as any is counted (and again when the count
    grows); corrected ones only when they grow past the count first seen, since a
    counter the agent meets already above zero tells nothing new; and too few devices.
    """
    conditions: list[Condition] = []
    corrected_seen: dict[tuple[str, str], int] = {}
    for device in report.devices:
        for code in UNCORRECTED_CODES:
            count = getattr(device, ECC_COUNTERS[code])
            if count > 0:
                conditions.append(_ecc_condition(device, code, count, count))
        for code in CORRECTED_CODES:
            count = getattr(device, ECC_COUNTERS[code])
            baseline = min(previous.corrected_seen.get((device.device, code), count), count)
            corrected_seen[device.device, code] = baseline
            if count > baseline:
                conditions.append(_ecc_condition(device, code, count, count - baseline))
    found = report.device_count if report.device_count is not None else len(report.devices)
    if report.device_count is not None or report.devices:
        conditions.extend(count_low(found, thresholds.expected_devices, "Neuron devices"))
    findings, reported = report_changes(node, SOURCE, conditions, previous.reported, now)
    return findings, NeuronState(MappingProxyType(corrected_seen), reported)


def _ecc_condition(device: NeuronDeviceReading, code: str, count: int, value: int) -> Condition:
    counter = ECC_COUNTERS[code]
    return Condition("neuron_ecc", code, device.device, value,
                     f"{device.device}: {count} {counter.replace('_', ' ')} events",
                     f"{device.device} {counter}={count}")


# ---------------------------------------------------------------------------- live edge

class NeuronMonitor:
    """Runs `neuron-monitor` and yields its reports. Where the binary is absent it is
    disabled with one log line and yields nothing."""

    def __init__(self, binary: str = "neuron-monitor", config_path: str | None = None):
        self.binary = binary
        self.config_path = config_path
        self.parser = NeuronParser()
        self.disabled_reason: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._checked = False

    @property
    def argv(self) -> list[str]:
        path = shutil.which(self.binary)
        argv = [path or self.binary]
        if self.config_path:
            argv += ["-c", self.config_path]
        return argv

    @property
    def enabled(self) -> bool:
        if not self._checked:
            self._checked = True
            if shutil.which(self.binary) is None:
                self.disabled_reason = f"{self.binary} not found on PATH (no Neuron tools here)"
                log.info("neuron: source disabled: %s", self.disabled_reason)
        return self.disabled_reason is None

    def reports(self) -> Iterator[NeuronReport]:
        """Reports as `neuron-monitor` writes them, until it exits or `close()`."""
        if not self.enabled:
            return
        self._process = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True, bufsize=1)
        assert self._process.stdout is not None
        for line in self._process.stdout:
            report = self.parser.feed(line)
            if report is not None:
                yield report
        code = self._process.wait()
        log.warning("neuron: %s exited with %s after %d lines (%d skipped)", self.binary, code,
                    self.parser.lines, self.parser.skipped)

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


def read_reports(lines: Iterable[str], parser: NeuronParser | None = None) -> list[NeuronReport]:
    """Every report in recorded `neuron-monitor` output (tests, the demo, benchmarks)."""
    parser = parser or NeuronParser()
    return [r for r in (parser.feed(line) for line in lines if line.strip()) if r is not None]

