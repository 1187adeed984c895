"""The host source: the node's own resources that a training job needs to keep going.

A full checkpoint file system makes the next save fail; a node short of memory gets its
ranks killed; a GPU that the driver no longer shows turns an 8-GPU job into a crash at
start. This module reads free space on the configured paths, available memory and the
count of accelerator device files (psutil and os.stat, in `read_host`), and decides in a
pure function, `findings_from_host`, against thresholds given in bytes or percent.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping

import psutil

from pitstop.amounts import Amount
from pitstop.model import Finding
from pitstop.daemon.conditions import (NOTHING_REPORTED, Condition, Reported, count_low,
                                       report_changes)


SOURCE = "host"

NVIDIA_DEVICE_GLOB = "/dev/nvidia[0-9]*"
NEURON_DEVICE_GLOB = "/dev/neuron[0-9]*"

@dataclass(frozen=True)
class HostThresholds:
    """Free space each path must keep, available memory, expected accelerator count."""

    min_free: Mapping[str, Amount] = field(default_factory=dict)  # path -> limit
    memory_min_available: Amount | None = None
    expected_accelerators: int | None = None
    accelerator_glob: str = NVIDIA_DEVICE_GLOB

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "HostThresholds":
        """From the agent configuration:
        {disk: {/checkpoints: 10%, /scratch: 100GiB}, memory_min_available: 5%,
         expected_accelerators: 8, accelerator_glob: /dev/nvidia[0-9]*}"""
        data = dict(data or {})
        known = {"disk", "memory_min_available", "expected_accelerators", "accelerator_glob"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown host setting(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        memory = data.get("memory_min_available")
        expected = data.get("expected_accelerators")
        return cls(min_free={str(path): Amount.parse(limit)
                             for path, limit in (data.get("disk") or {}).items()},
                   memory_min_available=None if memory is None else Amount.parse(memory),
                   expected_accelerators=None if expected is None else int(expected),
                   accelerator_glob=str(data.get("accelerator_glob", NVIDIA_DEVICE_GLOB)))


@dataclass
class DiskReading:
    path: str
    total_bytes: int | None  # None: the path could not be read
    free_bytes: int | None
    error: str = ""


@dataclass
class HostReading:
    disks: list[DiskReading]
    memory_available_bytes: int
    memory_total_bytes: int
    accelerators_found: int
    accelerator_paths: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- live edge

def read_disk(path: str) -> DiskReading:
    try:
        usage = psutil.disk_usage(path)
    except OSError as error:
        return DiskReading(path, None, None, error=f"{type(error).__name__}: {error.strerror or error}")
    return DiskReading(path, usage.total, usage.free)


def accelerator_paths(pattern: str = NVIDIA_DEVICE_GLOB) -> list[str]:
    """Character devices matching `pattern` (`/dev/nvidia[0-9]*` leaves out nvidiactl and
    nvidia-uvm), in index order."""
    paths = []
    for path in glob.glob(pattern):
        try:
            if stat.S_ISCHR(os.stat(path).st_mode):
                paths.append(path)
        except FileNotFoundError:
            continue
    return sorted(paths, key=device_index)


def device_index(path: str) -> int:
    """The number at the end of a device file's name (/dev/nvidia3 -> 3; -1 when none)."""
    digits = ""
    for char in reversed(os.path.basename(path)):
        if not char.isdigit():
            break
        digits = char + digits
    return int(digits) if digits else -1


def count_accelerators(pattern: str = NVIDIA_DEVICE_GLOB) -> int:
    return len(accelerator_paths(pattern))


def read_host(thresholds: HostThresholds) -> HostReading:
    memory = psutil.virtual_memory()
    paths = accelerator_paths(thresholds.accelerator_glob)
    return HostReading(disks=[read_disk(path) for path in thresholds.min_free],
                       memory_available_bytes=memory.available,
                       memory_total_bytes=memory.total,
                       accelerators_found=len(paths), accelerator_paths=paths)


# ---------------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class HostState:
    """The conditions already reported. Start with `HostState()`."""

    reported: Reported = field(default_factory=lambda: NOTHING_REPORTED)


def findings_from_host(node: str, reading: HostReading, previous: HostState,
                       thresholds: HostThresholds, now: float) -> tuple[list[Finding], HostState]:
    """`disk_low` per path short of its limit (or unreadable), `memory_low`, and
    `accelerator_count_low`; each reported when it starts and again for each further 1%
    of the total it falls short, not on every poll."""
    conditions: list[Condition] = []
    for disk in reading.disks:
        conditions.extend(_disk_low(disk, thresholds.min_free.get(disk.path)))
    if thresholds.memory_min_available is not None:
        limit = thresholds.memory_min_available.limit_bytes(reading.memory_total_bytes)
        if reading.memory_available_bytes < limit:
            conditions.append(Condition(
                "memory_low", "", "",
                _shortfall_steps(limit - reading.memory_available_bytes, reading.memory_total_bytes),
                f"{_gib(reading.memory_available_bytes)} of memory available, "
                f"below the limit of {_gib(limit)} ({thresholds.memory_min_available})",
                f"available={reading.memory_available_bytes} total={reading.memory_total_bytes} "
                f"limit={limit}"))
    conditions.extend(count_low(reading.accelerators_found, thresholds.expected_accelerators,
                                f"accelerator devices ({thresholds.accelerator_glob})"))
    findings, reported = report_changes(node, SOURCE, conditions, previous.reported, now)
    return findings, HostState(reported)


def _disk_low(disk: DiskReading, limit: Amount | None) -> list[Condition]:
    if limit is None:
        return []
    if disk.free_bytes is None or disk.total_bytes is None:
        return [Condition("disk_low", "", disk.path, 1, f"{disk.path} cannot be read: {disk.error}",
                          f"path={disk.path} error={disk.error}")]
    limit_bytes = limit.limit_bytes(disk.total_bytes)
    if disk.free_bytes >= limit_bytes:
        return []
    return [Condition("disk_low", "", disk.path,
                      _shortfall_steps(limit_bytes - disk.free_bytes, disk.total_bytes),
                      f"{disk.path}: {_gib(disk.free_bytes)} free, below the limit of "
                      f"{_gib(limit_bytes)} ({limit})",
                      f"path={disk.path} free={disk.free_bytes} total={disk.total_bytes} "
                      f"limit={limit_bytes}")]


def _shortfall_steps(shortfall: int, total: int) -> int:
    """1 for any shortfall, one more for each further 1% of the total: a disk that keeps
    filling is reported again as it gets worse, not on every byte."""
    return 1 + (shortfall * 100 // total if total else 0)


def _gib(count: int) -> str:
    return f"{count / 1024**3:.1f} GiB"
