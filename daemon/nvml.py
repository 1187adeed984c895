"""The NVML source: what each NVIDIA GPU's counters say, turned into findings.

A GPU reports most of its faults only through counters (a volatile double-bit ECC error,
a pending row remap, a link that trained at x8) that no log line repeats. This module
reads them through pynvml into one `GpuReading` per GPU per poll, and applies the
thresholds from the XID reference in a pure function, `findings_from_readings`, so every
rule is tested on recorded readings. The live edge (`NvmlSampler`) is thin; where there
is no NVIDIA driver it disables itself with one log line and returns no readings.
`NvmlReplay` plays recorded polls back (with faults injected) for tests, the demo and the
benchmarks; `python -m pitstop.daemon.nvml --record OUT --polls N` records them on a GPU
machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping

import pynvml

from pitstop.model import Finding
from pitstop.daemon.conditions import (NOTHING_REPORTED, Condition, Reported, count_low,
                                       report_changes)

log = logging.getLogger(__name__)

SOURCE = "nvml"

# HW slowdown 0x08, SW thermal 0x20, HW thermal 0x40, HW power brake 0x80: the reasons
# that mean the GPU is being held back by heat or power, not by its own idleness or cap.
THROTTLE_FAULT_MASK = 0xE8

THROTTLE_REASON_NAMES = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# nvmlGpuRecoveryAction_t, as NVML_FI_DEV_GET_GPU_RECOVERY_ACTION reports it.
RECOVERY_ACTION_NAMES = {
    0: "none",
    1: "GPU reset",
    2: "node reboot",
    3: "drain P2P",
    4: "drain and reset",
    5: "recover IMEX domain",
    6: "bus reset",
    7: "system reboot",
}


@dataclass
class GpuReading:
    """One GPU at one poll. A field is None where the GPU or driver does not report it."""

    index: int
    uuid: str = ""
    name: str = ""
    pci_bus_id: str = ""  # as NVML writes it: 00000000:3B:00.0
    ecc_sbe_volatile: int | None = None
    ecc_dbe_volatile: int | None = None
    ecc_sbe_aggregate: int | None = None
    ecc_dbe_aggregate: int | None = None
    retired_pages_sbe: int | None = None  # pages retired for multiple single-bit errors
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    row_remap_correctable: int | None = None
    row_remap_uncorrectable: int | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    throttle_reasons: int | None = None  # nvmlClocksEventReason bit mask
    temperature_c: int | None = None
    power_w: float | None = None
    util_gpu_pct: int | None = None
    util_mem_pct: int | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    pcie_gen: int | None = None
    pcie_gen_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None
    nvlink_up: list[bool | None] | None = None  # by link number; None: no NVLink here
    recovery_action: int | None = None  # None: the driver lacks the field

    @property
    def device(self) -> str:
        return f"gpu{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GpuReading":
        """Fields this version does not know are ignored; a missing `index` is a TypeError."""
        return cls(**{k: v for k, v in data.items() if k in _READING_FIELDS})


_READING_FIELDS = frozenset(f.name for f in fields(GpuReading))


# ---------------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class NvmlThresholds:
    """The counter rules' limits. Defaults follow the XID reference's counter section."""

    expected_gpus: int | None = None  # None: do not check the count
    ecc_sbe_volatile_max: int = 0  # more volatile single-bit errors than this: reported
    retired_pages_sbe_max: int = 60
    throttle_mask: int = THROTTLE_FAULT_MASK
    throttle_sustained_polls: int = 3  # never on one sample
    temperature_max_c: int = 85
    temperature_hysteresis_c: int = 5  # a hot GPU stays hot until this much below the max
    pcie_gen_load_util_pct: int = 50  # idle GPUs lower their link gen to save power

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "NvmlThresholds":
        """From the agent's configuration; an unknown key is an error, named."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown nvml threshold(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        if isinstance(data.get("throttle_mask"), str):
            data["throttle_mask"] = int(data["throttle_mask"], 0)
        return cls(**data)


@dataclass(frozen=True)
class NvmlState:
    """What one poll's decisions leave for the next: consecutive throttled polls per GPU
    index, and the conditions already reported. Start with `NvmlState()`."""

    throttle_streaks: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    reported: Reported = field(default_factory=lambda: NOTHING_REPORTED)


def findings_from_readings(node: str, readings: Iterable[GpuReading], previous: NvmlState,
                           thresholds: NvmlThresholds,
                           now: float) -> tuple[list[Finding], NvmlState]:
    """The findings for one poll of every GPU on `node`, and the state for the next poll.

    Pure: the same readings and state give the same answer. A condition is reported when
    it starts or worsens (a counter grew), not again on every poll that it holds.
    """
    readings = list(readings)
    streaks = {r.index: _throttle_streak(r, previous, thresholds) for r in readings}
    conditions: list[Condition] = []
    for reading in readings:
        for rule in GPU_RULES:
            conditions.extend(rule(reading, thresholds, streaks[reading.index], previous.reported))
    conditions.extend(count_low(len(readings), thresholds.expected_gpus, "GPUs"))
    findings, reported = report_changes(node, SOURCE, conditions, previous.reported, now)
    return findings, NvmlState(MappingProxyType(streaks), reported)


def _throttle_streak(reading: GpuReading, previous: NvmlState, thresholds: NvmlThresholds) -> int:
    if not (reading.throttle_reasons or 0) & thresholds.throttle_mask:
        return 0
    return previous.throttle_streaks.get(reading.index, 0) + 1


def _evidence(reading: GpuReading, *names: str) -> str:
    values = " ".join(f"{name}={getattr(reading, name)}" for name in names)
    return f"{reading.device} uuid={reading.uuid} pci={reading.pci_bus_id} {values}"


def _counter_rule(signal: str, attribute: str, limit: Callable[[NvmlThresholds], int], what: str):
    """A rule that holds while a counter is above its limit; its value is the count."""
    def rule(reading: GpuReading, thresholds: NvmlThresholds, streak: int,
             reported: Reported) -> list[Condition]:
        count = getattr(reading, attribute)
        if count is None or count <= limit(thresholds):
            return []
        return [Condition(signal, "", reading.device, count, f"{reading.device}: {count} {what}",
                          _evidence(reading, attribute))]
    rule.__name__ = signal
    return rule


def _flag_rule(signal: str, attribute: str, what: str):
    """A rule that holds while a boolean the driver reports is true."""
    def rule(reading: GpuReading, thresholds: NvmlThresholds, streak: int,
             reported: Reported) -> list[Condition]:
        if not getattr(reading, attribute):
            return []
        return [Condition(signal, "", reading.device, 1, f"{reading.device}: {what}",
                          _evidence(reading, attribute))]
    rule.__name__ = signal
    return rule


def _throttle(reading: GpuReading, thresholds: NvmlThresholds, streak: int,
              reported: Reported) -> list[Condition]:
    if streak < thresholds.throttle_sustained_polls:
        return []
    reasons = (reading.throttle_reasons or 0) & thresholds.throttle_mask
    names = [name for bit, name in THROTTLE_REASON_NAMES.items() if reasons & bit]
    return [Condition("throttle", f"{reasons:#x}", reading.device, 1,
                      f"{reading.device}: clocks held back for {streak} polls: {', '.join(names)}",
                      _evidence(reading, "throttle_reasons", "temperature_c", "power_w"))]


def _pcie_link(reading: GpuReading, thresholds: NvmlThresholds, streak: int,
               reported: Reported) -> list[Condition]:
    """Fewer lanes than the link's maximum always; a lower gen only under load, because
    an idle GPU lowers its link speed on purpose."""
    lanes_missing = 0
    if reading.pcie_width and reading.pcie_width_max and reading.pcie_width < reading.pcie_width_max:
        lanes_missing = reading.pcie_width_max - reading.pcie_width
    gens_missing = 0
    loaded = (reading.util_gpu_pct or 0) >= thresholds.pcie_gen_load_util_pct
    if loaded and reading.pcie_gen and reading.pcie_gen_max and reading.pcie_gen < reading.pcie_gen_max:
        gens_missing = reading.pcie_gen_max - reading.pcie_gen
    if not (lanes_missing or gens_missing):
        return []
    return [Condition("pcie_link_degraded", "", reading.device, lanes_missing + gens_missing,
                      f"{reading.device}: PCIe link at gen{reading.pcie_gen} x{reading.pcie_width}, "
                      f"capable of gen{reading.pcie_gen_max} x{reading.pcie_width_max}",
                      _evidence(reading, "pcie_gen", "pcie_gen_max", "pcie_width",
                                "pcie_width_max", "util_gpu_pct"))]


def _nvlink_down(reading: GpuReading, thresholds: NvmlThresholds, streak: int,
                 reported: Reported) -> list[Condition]:
    return [Condition("nvlink_down", str(link), reading.device, 1,
                      f"{reading.device}: NVLink {link} is not active",
                      _evidence(reading, "nvlink_up"))
            for link, up in enumerate(reading.nvlink_up or []) if up is False]


def _temperature_high(reading: GpuReading, thresholds: NvmlThresholds, streak: int,
                      reported: Reported) -> list[Condition]:
    if reading.temperature_c is None:
        return []
    was_hot = ("temperature_high", "", reading.device) in reported
    limit = thresholds.temperature_max_c - (thresholds.temperature_hysteresis_c if was_hot else 0)
    if reading.temperature_c < limit:
        return []
    return [Condition("temperature_high", "", reading.device, 1,
                      f"{reading.device}: {reading.temperature_c} C "
                      f"(limit {thresholds.temperature_max_c} C)",
                      _evidence(reading, "temperature_c", "throttle_reasons"))]


def _recovery_action(reading: GpuReading, thresholds: NvmlThresholds, streak: int,
                     reported: Reported) -> list[Condition]:
    action = reading.recovery_action
    if not action:
        return []
    name = RECOVERY_ACTION_NAMES.get(action, "unknown action")
    return [Condition("recovery_action", str(action), reading.device, 1,
                      f"{reading.device}: the driver asks for {name} ({action})",
                      _evidence(reading, "recovery_action"))]


GPU_RULES = (
    _counter_rule("ecc_dbe_volatile", "ecc_dbe_volatile", lambda t: 0,
                  "volatile double-bit ECC errors"),
    _counter_rule("ecc_sbe_volatile", "ecc_sbe_volatile", lambda t: t.ecc_sbe_volatile_max,
                  "volatile single-bit ECC errors"),
    _counter_rule("ecc_dbe_aggregate", "ecc_dbe_aggregate", lambda t: 0,
                  "double-bit ECC errors over the GPU's life"),
    _counter_rule("retired_pages_sbe", "retired_pages_sbe", lambda t: t.retired_pages_sbe_max,
                  "pages retired for single-bit errors"),
    _flag_rule("retired_pages_pending", "retired_pages_pending",
               "pages wait for retirement (takes effect at the next reset)"),
    _flag_rule("row_remap_pending", "row_remap_pending",
               "a row remap waits for the next reset"),
    _flag_rule("row_remap_failure", "row_remap_failure",
               "row remapping failed: no spare rows left"),
    _throttle,
    _pcie_link,
    _nvlink_down,
    _temperature_high,
    _recovery_action,
)


# ---------------------------------------------------------------------------- XID events

@dataclass(frozen=True)
class XidEvent:
    """A critical XID that NVML delivered through its event set."""

    gpu_index: int
    xid: int
    time: float


def xid_finding(node: str, event: XidEvent) -> Finding:
    """The same `xid` finding the kmsg source gives for the kernel's line."""
    return Finding(node=node, signal="xid", code=str(event.xid), device=f"gpu{event.gpu_index}",
                   message=f"gpu{event.gpu_index}: XID {event.xid} (NVML event)",
                   evidence=f"nvmlEventTypeXidCriticalError gpu={event.gpu_index} "
                            f"eventData={event.xid}",
                   time=event.time, source=SOURCE)


class XidEventWaiter:
    """Waits on an NVML event set for critical XIDs on every GPU that supports them."""

    def __init__(self, handles: Mapping[int, Any]):
        self._event_set = pynvml.nvmlEventSetCreate()
        self.watched: list[int] = []
        for index, handle in handles.items():
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError,
                                                self._event_set)
            except pynvml.NVMLError_NotSupported:
                continue
            self.watched.append(index)
        unwatched = sorted(set(handles) - set(self.watched))
        if unwatched:
            log.info("nvml: GPUs %s do not deliver XID events; the kmsg source still sees them",
                     unwatched)

    def wait(self, timeout_ms: int) -> XidEvent | None:
        """The next XID, or None when `timeout_ms` passed without one."""
        try:
            data = pynvml.nvmlEventSetWait(self._event_set, timeout_ms)
        except pynvml.NVMLError_Timeout:
            return None
        if data.eventType != pynvml.nvmlEventTypeXidCriticalError:
            return None
        return XidEvent(gpu_index=pynvml.nvmlDeviceGetIndex(data.device),
                        xid=int(data.eventData), time=time.time())

    def close(self) -> None:
        if self._event_set is not None:
            pynvml.nvmlEventSetFree(self._event_set)
            self._event_set = None


# ---------------------------------------------------------------------------- live edge

# What a GPU or driver says when it lacks a counter: the field reads as None.
_UNAVAILABLE = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound,
                pynvml.NVMLError_NoData, pynvml.NVMLError_NoPermission)

# A link number past the GPU's last link reads as invalid, not as unsupported.
_NO_SUCH_LINK = (*_UNAVAILABLE, pynvml.NVMLError_InvalidArgument)

# nvmlInit's answer on a machine without an NVIDIA driver.
_NO_DRIVER = (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded)


def _read(fn: Callable[..., Any], *args: Any,
          unavailable: tuple[type[Exception], ...] = _UNAVAILABLE) -> Any:
    try:
        return fn(*args)
    except unavailable:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field_value(handle: Any, field_id: int) -> int | None:
    """One NVML field value as an int, None where the driver does not know the field."""
    values = _read(pynvml.nvmlDeviceGetFieldValues, handle, [field_id])
    if values is None or values[0].nvmlReturn != pynvml.NVML_SUCCESS:
        return None
    member = _FIELD_VALUE_MEMBER.get(values[0].valueType)
    return None if member is None else int(getattr(values[0].value, member))


_FIELD_VALUE_MEMBER = {
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


def _throttle_reasons(handle: Any) -> int | None:
    """The clocks-event reasons; drivers before r535 name the call "throttle reasons"."""
    try:
        return pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
    except pynvml.NVMLError_FunctionNotFound:
        return _read(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
    except _UNAVAILABLE:
        return None


def _nvlink_states(handle: Any) -> list[bool | None] | None:
    states: list[bool | None] = []
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        state = _read(pynvml.nvmlDeviceGetNvLinkState, handle, link, unavailable=_NO_SUCH_LINK)
        states.append(None if state is None else state == pynvml.NVML_FEATURE_ENABLED)
    while states and states[-1] is None:
        states.pop()
    return states or None


def read_gpu(index: int, handle: Any) -> GpuReading:
    """Every counter of one GPU; NVMLError_GpuIsLost and other real failures propagate."""
    ecc = {(kind, counter): _read(pynvml.nvmlDeviceGetTotalEccErrors, handle, kind, counter)
           for kind in (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                        pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
           for counter in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC)}
    sbe_pages = _read(pynvml.nvmlDeviceGetRetiredPages, handle,
                      pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
    dbe_pages = _read(pynvml.nvmlDeviceGetRetiredPages, handle,
                      pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
    pages_pending = _read(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
    remap = _read(pynvml.nvmlDeviceGetRemappedRows, handle) or (None, None, None, None)
    power_mw = _read(pynvml.nvmlDeviceGetPowerUsage, handle)
    util = _read(pynvml.nvmlDeviceGetUtilizationRates, handle)
    memory = _read(pynvml.nvmlDeviceGetMemoryInfo, handle)
    pci = _read(pynvml.nvmlDeviceGetPciInfo, handle)
    corrected, uncorrected = (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                              pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
    return GpuReading(
        index=index,
        uuid=_text(_read(pynvml.nvmlDeviceGetUUID, handle) or ""),
        name=_text(_read(pynvml.nvmlDeviceGetName, handle) or ""),
        pci_bus_id=_text(pci.busId) if pci is not None else "",
        ecc_sbe_volatile=ecc[corrected, pynvml.NVML_VOLATILE_ECC],
        ecc_dbe_volatile=ecc[uncorrected, pynvml.NVML_VOLATILE_ECC],
        ecc_sbe_aggregate=ecc[corrected, pynvml.NVML_AGGREGATE_ECC],
        ecc_dbe_aggregate=ecc[uncorrected, pynvml.NVML_AGGREGATE_ECC],
        retired_pages_sbe=None if sbe_pages is None else len(sbe_pages),
        retired_pages_dbe=None if dbe_pages is None else len(dbe_pages),
        retired_pages_pending=None if pages_pending is None
        else pages_pending == pynvml.NVML_FEATURE_ENABLED,
        row_remap_correctable=remap[0],
        row_remap_uncorrectable=remap[1],
        row_remap_pending=None if remap[2] is None else bool(remap[2]),
        row_remap_failure=None if remap[3] is None else bool(remap[3]),
        throttle_reasons=_throttle_reasons(handle),
        temperature_c=_read(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
        power_w=None if power_mw is None else power_mw / 1000.0,
        util_gpu_pct=None if util is None else util.gpu,
        util_mem_pct=None if util is None else util.memory,
        memory_used_bytes=None if memory is None else memory.used,
        memory_total_bytes=None if memory is None else memory.total,
        pcie_gen=_read(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
        pcie_gen_max=_read(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
        pcie_width=_read(pynvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
        pcie_width_max=_read(pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
        nvlink_up=_nvlink_states(handle),
        recovery_action=_field_value(handle, pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION),
    )


class NvmlSampler:
    """Live readings through pynvml. Initialises NVML on first use; without a driver it
    stays disabled (one log line says why) and every poll returns no readings."""

    def __init__(self) -> None:
        self._opened = False
        self._handles: dict[int, Any] = {}
        self.disabled_reason: str | None = None
        self._failing: dict[int, str] = {}  # GPU index -> the error its last read raised

    @property
    def enabled(self) -> bool:
        self._open()
        return self.disabled_reason is None

    def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        try:
            pynvml.nvmlInit()
        except _NO_DRIVER as error:
            self.disabled_reason = f"no NVIDIA driver on this node ({error})"
            log.info("nvml: source disabled: %s", self.disabled_reason)
            return
        except pynvml.NVMLError as error:
            self.disabled_reason = f"NVML failed to start: {error}"
            log.error("nvml: source disabled: %s", self.disabled_reason)
            return
        count = pynvml.nvmlDeviceGetCount()
        for index in range(count):
            try:
                self._handles[index] = pynvml.nvmlDeviceGetHandleByIndex(index)
            except pynvml.NVMLError as error:  # left out: the count check sees it missing
                log.warning("nvml: gpu%d does not answer at start: %s", index, error)
        log.info("nvml: watching %d of %d GPUs (driver %s)", len(self._handles), count,
                 _text(_read(pynvml.nvmlSystemGetDriverVersion) or "unknown"))

    def poll(self) -> list[GpuReading]:
        """One reading per GPU that answered; a GPU whose read fails is left out (and
        logged when it starts or stops failing), so the count check sees it missing."""
        if not self.enabled:
            return []
        readings = []
        failing: dict[int, str] = {}
        for index, handle in self._handles.items():
            try:
                readings.append(read_gpu(index, handle))
            except pynvml.NVMLError as error:
                failing[index] = str(error)
        if failing != self._failing:
            for index in sorted(failing.keys() - self._failing.keys()):
                log.warning("nvml: gpu%d does not answer: %s", index, failing[index])
            for index in sorted(self._failing.keys() - failing.keys()):
                log.info("nvml: gpu%d answers again", index)
            self._failing = failing
        return readings

    def xid_waiter(self) -> XidEventWaiter | None:
        """An XID event waiter over every GPU, or None while the source is disabled."""
        return XidEventWaiter(self._handles) if self.enabled else None

    def record(self, path: Path | str, polls: int, interval_s: float = 5.0) -> int:
        """Write `polls` polls as JSON lines, the format `NvmlReplay` plays back."""
        if not self.enabled:
            raise RuntimeError(f"cannot record: {self.disabled_reason}")
        with open(path, "w", encoding="utf-8") as out:
            for number in range(polls):
                if number:
                    time.sleep(interval_s)
                out.write(poll_line(time.time(), self.poll()) + "\n")
                out.flush()
        return polls

    def close(self) -> None:
        if self._opened and self.disabled_reason is None:
            pynvml.nvmlShutdown()
        self._opened = False
        self._handles = {}
        self.disabled_reason = None


# ---------------------------------------------------------------------------- replay

def poll_line(taken_at: float, readings: Iterable[GpuReading]) -> str:
    """One poll as one JSON line: {"time": epoch seconds, "gpus": [GpuReading dicts]}."""
    return json.dumps({"time": round(taken_at, 3), "gpus": [r.to_dict() for r in readings]},
                      separators=(",", ":"))


@dataclass
class Recording:
    polls: list[list[GpuReading]]
    skipped: list[int]  # the line numbers (from 1) that were not a poll


def load_recording(path: Path | str) -> Recording:
    """The polls in a recording; lines that are not a poll are counted, never guessed at."""
    polls: list[list[GpuReading]] = []
    skipped: list[int] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            poll = _parse_poll(line)
            if poll is None:
                skipped.append(number)
            else:
                polls.append(poll)
    if skipped:
        log.warning("nvml: %s: skipped %d line(s) that are not a poll: %s", path, len(skipped),
                    skipped[:10])
    return Recording(polls, skipped)


def _parse_poll(line: str) -> list[GpuReading] | None:
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        return None
    if not all(isinstance(gpu, dict) and isinstance(gpu.get("index"), int) for gpu in data["gpus"]):
        return None
    return [GpuReading.from_dict(gpu) for gpu in data["gpus"]]


@dataclass(frozen=True)
class Fault:
    """Values forced onto one GPU's readings from poll `start` until before `stop`
    (counted from 0 over the whole replay); `drop` leaves the GPU out, as a GPU that
    fell off the bus."""

    gpu: int
    values: Mapping[str, Any] = field(default_factory=dict)
    start: int = 0
    stop: int | None = None
    drop: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.values) - (_READING_FIELDS - {"index"}))
        if unknown:
            raise ValueError(f"fault on gpu{self.gpu}: not a reading field: {', '.join(unknown)}")

    def applies(self, poll: int) -> bool:
        return poll >= self.start and (self.stop is None or poll < self.stop)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fault":
        """From YAML or JSON: {gpu: 3, start: 5, stop: 9, values: {ecc_dbe_volatile: 2}}."""
        return cls(gpu=int(data["gpu"]), values=dict(data.get("values") or {}),
                   start=int(data.get("start", 0)),
                   stop=None if data.get("stop") is None else int(data["stop"]),
                   drop=bool(data.get("drop", False)))


def inject(readings: Iterable[GpuReading], faults: Iterable[Fault], poll: int) -> list[GpuReading]:
    """`readings` with the faults that apply at `poll` forced onto them."""
    out = []
    for reading in readings:
        active = [f for f in faults if f.gpu == reading.index and f.applies(poll)]
        if any(f.drop for f in active):
            continue
        for fault in active:
            reading = replace(reading, **fault.values)
        out.append(reading)
    return out


class NvmlReplay:
    """Recorded polls played back in place of `NvmlSampler`, with faults injected.

    `poll()` gives the next recorded poll; at the end of the recording it starts again
    when `loop` is set, and otherwise repeats the last poll (the GPUs stay as recorded).
    """

    def __init__(self, path: Path | str, faults: Iterable[Fault] = (), loop: bool = True):
        recording = load_recording(path)
        if not recording.polls:
            raise ValueError(f"{path}: no polls in the recording")
        self.path = Path(path)
        self.recorded = recording.polls
        self.skipped = recording.skipped
        self.faults = tuple(faults)
        self.loop = loop
        self.polls_served = 0
        self.disabled_reason = None

    @property
    def enabled(self) -> bool:
        return True

    def poll(self) -> list[GpuReading]:
        number = self.polls_served
        if self.loop:
            recorded = self.recorded[number % len(self.recorded)]
        else:
            recorded = self.recorded[min(number, len(self.recorded) - 1)]
        self.polls_served += 1
        return inject(recorded, self.faults, number)

    def polls(self) -> Iterator[list[GpuReading]]:
        """Every recorded poll once, faults applied, from the start."""
        for number, recorded in enumerate(self.recorded):
            yield inject(recorded, self.faults, number)

    def xid_waiter(self) -> None:
        return None

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitstop.daemon.nvml",
                                     description="Record NVML readings of this machine's GPUs "
                                                 "as JSON lines that NvmlReplay plays back.")
    parser.add_argument("--record", metavar="OUT", required=True, help="file to write")
    parser.add_argument("--polls", type=int, default=12, help="number of polls (default 12)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between polls (default 5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sampler = NvmlSampler()
    try:
        written = sampler.record(args.record, args.polls, args.interval)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    finally:
        sampler.close()
    print(f"wrote {written} polls to {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
