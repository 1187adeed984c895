"""The agent's Prometheus exposition: GPU readings under dcgm-exporter's names, so the
Grafana dashboards a cluster already has keep working, and `pitstop_*` for the rest
(findings, actions, health state, the kernel-log reader, the breaker, Neuron, host).

Everything lives in a private `CollectorRegistry`, never the process-global one, so two
agents in one test process do not share counters. Readings are kept as the latest
snapshot and rendered at scrape time: a GPU that leaves the node leaves the output.
dcgm-exporter names are written as gauges: prometheus_client would append `_total` to a
counter's name, and the name is what dashboards match on.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from pitstop.model import Finding, Health

if TYPE_CHECKING:
    from pitstop.daemon.host import HostReading
    from pitstop.daemon.neuron import NeuronReport
    from pitstop.daemon.nvml import GpuReading

CONTENT_TYPE = CONTENT_TYPE_LATEST

MIB = 1024 * 1024

# The labels dcgm-exporter puts on every GPU series.
DCGM_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")


@dataclass(frozen=True)
class DcgmField:
    name: str
    help: str
    value: Callable[["GpuReading"], float | int | bool | None]


def _attribute(name: str) -> Callable[["GpuReading"], Any]:
    return lambda reading: getattr(reading, name)


def _fb_used_mib(reading: "GpuReading") -> float | None:
    return None if reading.memory_used_bytes is None else reading.memory_used_bytes // MIB


def _fb_free_mib(reading: "GpuReading") -> float | None:
    if reading.memory_used_bytes is None or reading.memory_total_bytes is None:
        return None
    return (reading.memory_total_bytes - reading.memory_used_bytes) // MIB


DCGM_FIELDS = (
    DcgmField("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", _attribute("temperature_c")),
    DcgmField("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", _attribute("power_w")),
    DcgmField("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", _attribute("util_gpu_pct")),
    DcgmField("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", _attribute("util_mem_pct")),
    DcgmField("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", _fb_used_mib),
    DcgmField("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", _fb_free_mib),
    DcgmField("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.",
              _attribute("ecc_sbe_volatile")),
    DcgmField("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.",
              _attribute("ecc_dbe_volatile")),
    DcgmField("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "Total number of single-bit persistent ECC errors.",
              _attribute("ecc_sbe_aggregate")),
    DcgmField("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "Total number of double-bit persistent ECC errors.",
              _attribute("ecc_dbe_aggregate")),
    DcgmField("DCGM_FI_DEV_RETIRED_SBE", "Total number of retired pages due to single-bit errors.",
              _attribute("retired_pages_sbe")),
    DcgmField("DCGM_FI_DEV_RETIRED_DBE", "Total number of retired pages due to double-bit errors.",
              _attribute("retired_pages_dbe")),
    DcgmField("DCGM_FI_DEV_RETIRED_PENDING", "Total number of pages pending retirement.",
              _attribute("retired_pages_pending")),
    DcgmField("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
              "Number of remapped rows for uncorrectable errors",
              _attribute("row_remap_uncorrectable")),
    DcgmField("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
              "Number of remapped rows for correctable errors", _attribute("row_remap_correctable")),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed",
              _attribute("row_remap_failure")),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_PENDING", "Whether a row remap waits for the next reset",
              _attribute("row_remap_pending")),
    DcgmField("DCGM_FI_DEV_PCIE_LINK_GEN", "PCIe current link generation.", _attribute("pcie_gen")),
    DcgmField("DCGM_FI_DEV_PCIE_LINK_WIDTH", "PCIe current link width.", _attribute("pcie_width")),
    DcgmField("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "PCIe max link generation.",
              _attribute("pcie_gen_max")),
    DcgmField("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "PCIe max link width.",
              _attribute("pcie_width_max")),
    DcgmField("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "Current clock throttle reasons (bit mask).",
              _attribute("throttle_reasons")),
)

XID_FIELD = "DCGM_FI_DEV_XID_ERRORS"

_BUS_ID = re.compile(r"(?:pci:)?([0-9a-f]{1,8}):([0-9a-f]{2}):([0-9a-f]{2})", re.IGNORECASE)


def bus_key(bus_id: str) -> tuple[int, int, int] | None:
    """(domain, bus, device) of `00000000:3B:00.0` (NVML) or `0000:3b:00` (the kernel log)."""
    match = _BUS_ID.search(bus_id)
    return None if match is None else tuple(int(part, 16) for part in match.groups())


class Metrics:
    """What the agent loop tells the exposition; `render()` is what `/metrics` serves."""

    def __init__(self, hostname: str | None = None):
        self.hostname = hostname or socket.gethostname()
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._gpus: tuple["GpuReading", ...] = ()
        self._last_xid: dict[str, int] = {}  # "gpuN" or a bus key's text -> last XID seen
        self._neuron: "NeuronReport | None" = None
        self._host: "HostReading | None" = None
        self._kmsg_lines = 0
        self._kmsg_skipped = 0
        self._findings = Counter("pitstop_findings", "Findings the sources reported.",
                                 ["signal", "code"], registry=self.registry)
        self._actions = Counter("pitstop_actions", "Actions the agent took (or, in shadow mode, "
                                "would have taken).", ["action"], registry=self.registry)
        self._health = Gauge("pitstop_health_state", "The node's pitstop health: 1 for the "
                             "current state.", ["state"], registry=self.registry)
        self._breaker = Gauge("pitstop_breaker_open", "1 while the blast-radius breaker holds "
                              "fencing back.", registry=self.registry)
        self.registry.register(_SnapshotCollector(self))
        self.health(Health.UNKNOWN)

    # The agent loop's calls.

    def observe_gpus(self, readings: Iterable["GpuReading"]) -> None:
        with self._lock:
            self._gpus = tuple(readings)

    def observe_neuron(self, report: "NeuronReport | None") -> None:
        with self._lock:
            self._neuron = report

    def observe_host(self, reading: "HostReading | None") -> None:
        with self._lock:
            self._host = reading

    def observe_kmsg(self, lines_total: int, skipped_total: int) -> None:
        """The kmsg source's own running totals (lines read, lines it could not parse)."""
        with self._lock:
            self._kmsg_lines, self._kmsg_skipped = lines_total, skipped_total

    def finding(self, finding: Finding) -> None:
        self._findings.labels(signal=finding.signal, code=finding.code).inc()
        if finding.signal != "xid" or not finding.code.isdigit():
            return
        if finding.device.startswith("gpu"):
            key = finding.device
        elif (bus := bus_key(finding.device)) is not None:
            key = str(bus)
        else:
            return
        with self._lock:
            self._last_xid[key] = int(finding.code)

    def action(self, kind: str) -> None:
        self._actions.labels(action=kind).inc()

    def health(self, state: Health | str) -> None:
        current = Health(state)
        for each in Health:
            self._health.labels(state=each.value).set(1 if each is current else 0)

    def breaker(self, is_open: bool) -> None:
        self._breaker.set(1 if is_open else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)

    # For the collector.

    def _snapshot(self) -> tuple[Sequence["GpuReading"], dict[str, int], "NeuronReport | None",
                                 "HostReading | None", int, int]:
        with self._lock:
            return (self._gpus, dict(self._last_xid), self._neuron, self._host,
                    self._kmsg_lines, self._kmsg_skipped)


class _SnapshotCollector:
    """Renders the latest readings at scrape time."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        gpus, last_xid, neuron, host, kmsg_lines, kmsg_skipped = self.metrics._snapshot()
        yield from _gpu_families(gpus, last_xid, self.metrics.hostname)
        yield CounterMetricFamily("pitstop_kmsg_lines", "Kernel log lines the kmsg source read.",
                                  value=kmsg_lines)
        yield CounterMetricFamily("pitstop_kmsg_skipped", "Kernel log lines the kmsg source "
                                  "could not parse.", value=kmsg_skipped)
        if neuron is not None:
            yield from _neuron_families(neuron)
        if host is not None:
            yield from _host_families(host)


def _gpu_families(gpus: Sequence["GpuReading"], last_xid: dict[str, int],
                  hostname: str) -> Iterator[Metric]:
    labels = {r.index: [str(r.index), r.uuid, r.pci_bus_id, f"nvidia{r.index}", r.name, hostname]
              for r in gpus}
    for spec in DCGM_FIELDS:
        family = GaugeMetricFamily(spec.name, spec.help, labels=DCGM_LABELS)
        for reading in gpus:
            value = spec.value(reading)
            if value is not None:
                family.add_metric(labels[reading.index], float(value))
        yield family
    xid = GaugeMetricFamily(XID_FIELD, "Value of the last XID error encountered.",
                            labels=DCGM_LABELS)
    for reading in gpus:
        code = last_xid.get(reading.device, last_xid.get(str(bus_key(reading.pci_bus_id)), 0))
        xid.add_metric(labels[reading.index], code)
    yield xid
    nvlink = GaugeMetricFamily("pitstop_gpu_nvlink_up", "1 while the NVLink is active.",
                               labels=[*DCGM_LABELS, "link"])
    recovery = GaugeMetricFamily("pitstop_gpu_recovery_action", "The driver's GPU recovery "
                                 "action: 0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, "
                                 "4 drain and reset.", labels=DCGM_LABELS)
    for reading in gpus:
        for link, up in enumerate(reading.nvlink_up or []):
            if up is not None:
                nvlink.add_metric([*labels[reading.index], str(link)], 1 if up else 0)
        if reading.recovery_action is not None:
            recovery.add_metric(labels[reading.index], reading.recovery_action)
    yield nvlink
    yield recovery


def _neuron_families(report: "NeuronReport") -> Iterator[Metric]:
    from pitstop.daemon.neuron import ECC_COUNTERS

    utilization = GaugeMetricFamily("pitstop_neuron_core_utilization_percent",
                                    "NeuronCore utilization over the report's period.",
                                    labels=["neuroncore", "runtime_tag"])
    for core in report.cores:
        utilization.add_metric([str(core.index), core.runtime_tag], core.utilization_pct)
    yield utilization
    ecc = CounterMetricFamily("pitstop_neuron_ecc_events", "ECC events per Neuron device.",
                              labels=["neuron_device", "kind"])
    for device in report.devices:
        for kind, counter in ECC_COUNTERS.items():
            ecc.add_metric([device.device, kind], getattr(device, counter))
    yield ecc
    yield GaugeMetricFamily("pitstop_neuron_device_memory_used_bytes",
                            "Neuron device memory the Neuron applications use.",
                            value=report.device_memory_used_bytes)
    yield GaugeMetricFamily("pitstop_neuron_host_memory_used_bytes",
                            "Host memory the Neuron applications use.",
                            value=report.host_memory_used_bytes)
    yield GaugeMetricFamily("pitstop_neuron_devices", "Neuron devices neuron-monitor reports.",
                            value=report.device_count if report.device_count is not None
                            else len(report.devices))


def _host_families(reading: "HostReading") -> Iterator[Metric]:
    free = GaugeMetricFamily("pitstop_host_disk_free_bytes", "Free space on a watched path.",
                             labels=["path"])
    total = GaugeMetricFamily("pitstop_host_disk_total_bytes", "Size of a watched path's "
                              "file system.", labels=["path"])
    for disk in reading.disks:
        if disk.free_bytes is not None and disk.total_bytes is not None:
            free.add_metric([disk.path], disk.free_bytes)
            total.add_metric([disk.path], disk.total_bytes)
    yield free
    yield total
    yield GaugeMetricFamily("pitstop_host_memory_available_bytes", "Memory available to new "
                            "work.", value=reading.memory_available_bytes)
    yield GaugeMetricFamily("pitstop_host_accelerators", "Accelerator device files found.",
                            value=reading.accelerators_found)
