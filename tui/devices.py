"""A node's accelerators, one row each, for the node detail: what its agent last read.

The agent publishes `telemetry["devices"]` in the node's state file (daemon/health.py):
per device its health, its worst open finding and the readings of its source (NVML's
GpuReading, the Neuron ECC counters, or only the device file where there is no NVML).
Any key may be missing or null, and an older agent publishes no `devices` at all: each
cell then says `-`, and the table says why it is empty. Pure functions, tested on dicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from pitstop.tui.views import size

COLUMNS = ("DEVICE", "HEALTH", "TEMP", "POWER", "UTIL", "MEMORY", "ECC SBE/DBE", "RETIRED/REMAP",
           "PCIE", "FINDING")
UNKNOWN = "-"


def node_state(state_dir: str | Path, node: str) -> dict[str, Any] | None:
    """The newest state file of `node` (`<node>.json`, or `<node>/<node>.json` as on the
    testbed), or None when there is none that reads as this node's."""
    root, best = Path(state_dir), None
    for path in (root / f"{node}.json", root / node / f"{node}.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and data.get("node") == node and \
                (best is None or data.get("updated_at", 0) >= best.get("updated_at", 0)):
            best = data
    return best


def devices_of(state: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The state's device entries; None when the agent publishes none (an older agent)."""
    telemetry = state.get("telemetry") if isinstance(state, dict) else None
    devices = telemetry.get("devices") if isinstance(telemetry, dict) else None
    if not isinstance(devices, list):
        return None
    return [d for d in devices if isinstance(d, dict)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pair(a: Any, b: Any) -> str:
    if not _number(a) and not _number(b):
        return UNKNOWN
    return f"{a if _number(a) else UNKNOWN}/{b if _number(b) else UNKNOWN}"


def _ecc(r: dict[str, Any]) -> Text:
    if "mem_ecc_corrected" in r or "sram_ecc_corrected" in r:  # Neuron: corrected/uncorrected
        text = f"mem {_pair(r.get('mem_ecc_corrected'), r.get('mem_ecc_uncorrected'))} " \
               f"sram {_pair(r.get('sram_ecc_corrected'), r.get('sram_ecc_uncorrected'))}"
        bad = any(_number(r.get(k)) and r[k] > 0 for k in ("mem_ecc_uncorrected", "sram_ecc_uncorrected"))
        return Text(text, style="bold red" if bad else "")
    text = _pair(r.get("ecc_sbe_volatile"), r.get("ecc_dbe_volatile"))
    aggregate = _pair(r.get("ecc_sbe_aggregate"), r.get("ecc_dbe_aggregate"))
    if aggregate != UNKNOWN:
        text = f"{text} (life {aggregate})" if text != UNKNOWN else f"life {aggregate}"
    bad = _number(r.get("ecc_dbe_volatile")) and r["ecc_dbe_volatile"] > 0
    return Text(text, style="bold red" if bad else "")


def _retired_remap(r: dict[str, Any]) -> Text:
    flags = [(r.get("retired_pages_pending"), "retire pending"), (r.get("row_remap_pending"), "remap pending"),
             (r.get("row_remap_failure"), "remap FAILED")]
    found = [name for value, name in flags if value is True]
    if found:
        return Text(", ".join(found), style="bold red" if "remap FAILED" in found else "yellow")
    if any(value is False for value, _ in flags):
        return Text("none pending")
    return Text(UNKNOWN)


def _pcie(r: dict[str, Any]) -> Text:
    gen, gen_max, width, width_max = (r.get(k) for k in ("pcie_gen", "pcie_gen_max", "pcie_width",
                                                          "pcie_width_max"))
    if not any(_number(v) for v in (gen, gen_max, width, width_max)):
        return Text(UNKNOWN)
    text = f"gen {_pair(gen, gen_max)} x{_pair(width, width_max)}"
    degraded = (_number(gen) and _number(gen_max) and gen < gen_max) or \
        (_number(width) and _number(width_max) and width < width_max)
    return Text(text + (" degraded" if degraded else ""), style="yellow" if degraded else "")


def device_cells(entry: dict[str, Any]) -> list[Text]:
    """One device's row, tolerant of any key missing or null."""
    r = entry.get("readings") if isinstance(entry.get("readings"), dict) else {}
    name = str(entry.get("device") or (f"{entry.get('kind', 'dev')}{r['index']}" if _number(r.get("index"))
                                       else r.get("path") or "?"))
    healthy = entry.get("healthy")
    health = Text("ok", style="green") if healthy is True else \
        Text("FAULT", style="bold red") if healthy is False else Text(UNKNOWN)
    if set(r) <= {"path"}:  # the device file alone: no NVML on this node
        note = f"{r['path']}: no readings (device file only)" if r.get("path") else "no readings"
        return [Text(name), health, *[Text(UNKNOWN)] * 7, Text(entry.get("finding") or note,
                                                              style="red" if entry.get("finding") else "dim")]
    temp = f"{r['temperature_c']} °C" if _number(r.get("temperature_c")) else UNKNOWN
    power = f"{r['power_w']:.0f} W" if _number(r.get("power_w")) else UNKNOWN
    util = f"{r['util_gpu_pct']}%" if _number(r.get("util_gpu_pct")) else UNKNOWN
    if _number(r.get("util_mem_pct")):
        util += f" mem {r['util_mem_pct']}%"
    used, total = r.get("memory_used_bytes"), r.get("memory_total_bytes")
    memory = f"{size(used) if _number(used) else UNKNOWN} / {size(total) if _number(total) else UNKNOWN}" \
        if _number(used) or _number(total) else UNKNOWN
    return [Text(name), health, Text(temp), Text(power), Text(util), Text(memory), _ecc(r),
            _retired_remap(r), _pcie(r), Text(entry.get("finding") or "", style="red")]


def device_table(devices: list[dict[str, Any]] | None) -> Table | Text:
    """The table the node detail shows, or a line that says why there is none."""
    if devices is None:
        return Text("this node's agent publishes no per-device readings (an older agent, or no agent)",
                    style="dim")
    if not devices:
        return Text("the agent found no accelerators on this node", style="dim")
    table = Table(box=None, pad_edge=False, header_style="bold", expand=False)
    for column in COLUMNS:
        table.add_column(column, no_wrap=column != "FINDING")
    for entry in devices:
        table.add_row(*device_cells(entry))
    return table
