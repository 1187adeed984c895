"""The agent's settings: `/etc/pitstop/agent.yaml`, every option also a command-line flag.

One dataclass holds them; the file is read once at start and checked whole, so a typo
is an error naming the file, the line and the key (with the nearest known key), not a
silently ignored setting.
"""

from __future__ import annotations

import difflib
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pitstop.yamlfile import DataFileError, MarkedDict, line_of, load_yaml

DEFAULT_CONFIG = Path("/etc/pitstop/agent.yaml")


@dataclass
class AgentConfig:
    """Everything `pitstop agent run` needs to know."""

    node: str = ""  # the Slurm node name; default $SLURMD_NODENAME or the short host name
    state_dir: Path = Path("/var/lib/pitstop")
    kmsg: str = "/dev/kmsg"  # or a plain file (the testbed's per-node kernel log)
    boot_id_file: str = "/proc/sys/kernel/random/boot_id"
    policy: Path | None = None  # operator overrides over the shipped default policy
    dry_run: bool = False
    listen: str = "127.0.0.1"
    port: int = 9464  # /metrics and /status; 0 picks a free one
    interval_s: float = 5.0  # telemetry (NVML, Neuron, host) poll interval
    jobs_interval_s: float = 5.0  # how often the node's jobs are read from Slurm
    kmsg_poll_s: float = 0.05  # plain-file kernel logs are polled this often
    nvml: str = "auto"  # auto | off | replay:<path>
    neuron: str = "auto"  # auto | off
    expected_gpus: int | None = None
    gpu_bus_ids: list[str] = field(default_factory=list)  # PCI bus ids in GPU index order
    expected_neuron_devices: int | None = None
    accelerator_glob: str = "/dev/nvidia[0-9]*"
    disk: dict[str, str] = field(default_factory=dict)  # path -> minimum free ("10%", "50GiB")
    memory_min_available: str = "2%"
    max_fenced_share: float = 0.5
    breaker_window_s: float = 3600.0
    replace_command: list[str] = field(default_factory=list)
    stall_k: float = 5.0  # a step slower than k x the recent median is a hang
    stall_floor_s: float = 300.0
    # How long a (re)started run may take to its first step (imports, rendezvous, loading
    # the checkpoint) before that counts as a hang; None: 4 x stall_floor_s.
    stall_startup_s: float | None = None
    slurm_timeout_s: float = 20.0
    # This node's slurmd pid file: slurmd seen dead this long sets the node DOWN at once
    # (`slurmd_down`), instead of after Slurm's SlurmdTimeout. "" turns the watch off.
    slurmd_pidfile: str = "/run/slurmd.pid"
    slurmd_grace_s: float = 3.0
    # Back from a reboot, a node returns to service only through this check (a process):
    # "full" runs `pitstop check full --resume` with the hooks' settings file (None: the
    # hooks' default); "none" resumes it as soon as it booted with no hardware finding.
    return_check: str = "full"
    return_check_config: str | None = None
    return_check_timeout_s: float = 1800.0  # a check still running then is a hung device
    return_check_retry_s: float = 60.0  # after a refused or broken check
    log_level: str = "info"

    def resolved_node(self) -> str:
        return self.node or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


_PATHS = {"state_dir", "policy"}
_TYPES: dict[str, tuple[type, ...]] = {
    "node": (str,), "state_dir": (str,), "kmsg": (str,), "boot_id_file": (str,), "policy": (str, type(None)),
    "dry_run": (bool,), "listen": (str,), "port": (int,), "interval_s": (int, float),
    "jobs_interval_s": (int, float), "kmsg_poll_s": (int, float), "nvml": (str,), "neuron": (str,),
    "expected_gpus": (int, type(None)), "gpu_bus_ids": (list,), "expected_neuron_devices": (int, type(None)),
    "accelerator_glob": (str,), "disk": (dict,), "memory_min_available": (str,),
    "max_fenced_share": (int, float), "breaker_window_s": (int, float), "replace_command": (list,),
    "stall_k": (int, float), "stall_floor_s": (int, float), "stall_startup_s": (int, float, type(None)),
    "slurm_timeout_s": (int, float),
    "slurmd_pidfile": (str,), "slurmd_grace_s": (int, float),
    "return_check": (str,), "return_check_config": (str, type(None)), "return_check_timeout_s": (int, float),
    "return_check_retry_s": (int, float), "log_level": (str,),
}


def load_config(path: Path | None, overrides: dict[str, Any]) -> AgentConfig:
    """The file's settings (when it exists, or when it was asked for), then the flags."""
    config = AgentConfig()
    if path is not None and (path.exists() or path != DEFAULT_CONFIG):
        doc = load_yaml(path)
        if doc is None:
            doc = MarkedDict()
        if not isinstance(doc, dict):
            raise DataFileError(str(path), line_of(doc), "", "expected a mapping of settings")
        for key, value in doc.items():
            _set(config, str(path), key, value, line_of(doc, key))
    for key, value in overrides.items():
        if value is not None:
            _set(config, "command line", key, value, None)
    if not 0 < config.max_fenced_share <= 1:
        raise DataFileError(str(path or "command line"), None, "max_fenced_share",
                            "must be above 0 and at most 1")
    if config.nvml not in {"auto", "off"} and not config.nvml.startswith("replay:"):
        raise DataFileError(str(path or "command line"), None, "nvml", "expected auto, off or replay:<path>")
    if config.return_check not in {"full", "none"}:
        raise DataFileError(str(path or "command line"), None, "return_check", "expected full or none")
    return config


def _set(config: AgentConfig, where: str, key: Any, value: Any, line: int | None) -> None:
    if key not in _TYPES:
        near = difflib.get_close_matches(str(key), list(_TYPES), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise DataFileError(where, line, str(key), f"unknown setting{hint}")
    kinds = _TYPES[key]
    if isinstance(value, bool) and bool not in kinds:
        raise DataFileError(where, line, key, f"expected {' or '.join(k.__name__ for k in kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise DataFileError(where, line, key,
                            f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    if key in _PATHS and value is not None:
        value = Path(value)
    if key == "replace_command" and not all(isinstance(a, str) for a in value):
        raise DataFileError(where, line, key, "expected a list of strings (an argument list)")
    setattr(config, key, dict(value) if isinstance(value, dict) else value)
