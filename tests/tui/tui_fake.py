"""A provider fed a recorded ClusterView: deterministic content for snapshot tests.

The view is what a four-node cluster looked like at one moment: a node pitstop fenced
after an XID 79, one an operator drained, a training job with progress and checkpoints,
a pending job, and the agents' events. The real-cluster paths are the pilot tests'.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pitstop.health_view import NodeHealth
from pitstop.model import Job
from pitstop.tui.data import CheckpointRow, ClusterView, JobRow, RunProgress
from pitstop.tui.providers import LaunchPreview, Launched, Provider, ProviderError

T0 = 1764580000.0  # 2025-12-01 09:06:40 UTC
RUN = "/shared/runs/llama3-tiny-seq256-cpu-pretrain-20251201-085000"

XID79 = {"node": "node2", "signal": "xid", "code": "79", "device": "gpu1",
         "message": "GPU has fallen off the bus", "action_class": "reboot", "time": T0 - 300}


def recorded_view() -> ClusterView:
    nodes = [
        NodeHealth("node1", "mixed", "OK", accelerators_healthy=2, accelerators_total=2,
                   agent_updated_at=T0 - 5, agent_stale=False, jobs=["41"]),
        NodeHealth("node2", "idle+drain", "FENCED", fence_class="reboot",
                   reason="pitstop: xid 79 gpu1 GPU has fallen off the bus", reason_is_pitstop=True,
                   accelerators_healthy=1, accelerators_total=2, worst_finding=XID79, open_findings=1,
                   agent_updated_at=T0 - 4, agent_stale=False,
                   actions=[{"time": T0 - 290, "action": "drain", "ok": True,
                             "reason": "pitstop: xid 79 gpu1 GPU has fallen off the bus"}]),
        NodeHealth("node3", "idle+drain", "OK", reason="bad DIMM, ticket 4411",
                   accelerators_healthy=2, accelerators_total=2, agent_updated_at=T0 - 6, agent_stale=False),
        NodeHealth("node4", "mixed", "UNKNOWN", accelerators_total=2, jobs=["41"]),
    ]
    running = Job("41", name="llama3-tiny", user="alice", state="RUNNING", nodes=["node1", "node4"],
                  num_nodes=2, partition="debug", start_time=T0 - 900, restart_count=1,
                  stdout=f"{RUN}/slurm-41.out", work_dir="/shared")
    pending = Job("42", name="mixtral-8x7b", user="bob", state="PENDING", reason="Resources",
                  num_nodes=4, partition="debug")
    progress = RunProgress(run_dir=RUN, step=120, max_steps=300,
                           losses=[4.1, 3.9, 3.6, 3.4, 3.3, 3.1, 3.0, 2.9, 2.85, 2.8, 2.7, 2.65],
                           loss=2.65, tokens_per_s=15234.0, step_time=0.5, eta_s=90.0, restarts=1,
                           last_checkpoint=100, heartbeat_at=T0 - 1)
    checkpoints = [
        CheckpointRow(RUN, "41", 50, 48_300_000, True, T0 - 600),
        CheckpointRow(RUN, "41", 100, 48_300_000, True, T0 - 120, restart_target=True),
        CheckpointRow(RUN, "41", 110, 12_000_000, False, T0 - 20),
    ]
    events = [
        {"time": T0 - 300, "node": "node2", "kind": "finding", "action_class": "reboot",
         "finding": {k: v for k, v in XID79.items() if k != "action_class"}},
        {"time": T0 - 299, "node": "node2", "kind": "transition", "from_health": "OK",
         "to_health": "FENCED", "fence_class": "reboot", "reason": "xid 79 gpu1"},
        {"time": T0 - 290, "node": "node2", "kind": "action", "action": "drain", "ok": True,
         "reason": "pitstop: xid 79 gpu1 GPU has fallen off the bus"},
        {"time": T0 - 280, "node": "node2", "kind": "action", "action": "requeue", "job_id": "40",
         "ok": True, "reason": "pitstop: node2 fenced"},
        {"time": T0 - 60, "node": "node1", "kind": "finding", "action_class": "watch",
         "finding": {"node": "node1", "signal": "ecc_sbe", "code": "volatile", "device": "gpu0",
                     "message": "single-bit ECC errors rising"}},
    ]
    return ClusterView(taken_at=T0, nodes=nodes, jobs=[JobRow(running, progress), JobRow(pending)],
                       checkpoints=checkpoints, events=events, source="recorded")


def gpu(index: int, **changes: Any) -> dict[str, Any]:
    """One GPU's readings as daemon.nvml.GpuReading.to_dict() writes them."""
    reading = {"index": index, "uuid": f"GPU-{index:08x}", "name": "NVIDIA H100 80GB HBM3",
               "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0", "ecc_sbe_volatile": 0,
               "ecc_dbe_volatile": 0, "ecc_sbe_aggregate": 2, "ecc_dbe_aggregate": 0,
               "retired_pages_sbe": 0, "retired_pages_dbe": 0, "retired_pages_pending": False,
               "row_remap_correctable": 0, "row_remap_uncorrectable": 0, "row_remap_pending": False,
               "row_remap_failure": False, "throttle_reasons": 0, "temperature_c": 41, "power_w": 312.4,
               "util_gpu_pct": 97, "util_mem_pct": 61, "memory_used_bytes": 61 * 2**30,
               "memory_total_bytes": 80 * 2**30, "pcie_gen": 5, "pcie_gen_max": 5, "pcie_width": 16,
               "pcie_width_max": 16, "nvlink_up": [True] * 18, "recovery_action": 0}
    reading.update(changes)
    return reading


# telemetry["devices"] of each node's state file, in the shape daemon/health.py documents.
DEVICES: dict[str, list[dict[str, Any]] | None] = {
    "node1": [{"device": "gpu0", "kind": "gpu", "healthy": True, "finding": None, "readings": gpu(0)},
              {"device": "gpu1", "kind": "gpu", "healthy": True,
               "finding": "single-bit ECC errors rising", "readings": gpu(1, ecc_sbe_volatile=14)}],
    "node2": [{"device": "gpu0", "kind": "gpu", "healthy": True, "finding": None,
               "readings": gpu(0, pcie_gen=3, util_gpu_pct=0, memory_used_bytes=0, power_w=71.0)},
              {"device": "gpu1", "kind": "gpu", "healthy": False, "finding": "GPU has fallen off the bus",
               "readings": {"path": "/dev/nvidia1"}}],
    "node3": None,  # an older agent: no devices in its state file
}

def write_state(path, node: str, devices: list[dict[str, Any]] | None = None,
                updated_at: float = T0) -> None:
    """A node's agent state file (daemon/health.py's shape), with `telemetry["devices"]`
    when `devices` is given and without it (an older agent) when not."""
    telemetry: dict[str, Any] = {"heartbeat_at": updated_at, "accelerators_total": 2}
    if devices is not None:
        telemetry["devices"] = devices
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "node": node, "health": "OK", "updated_at": updated_at,
                                "open_findings": [], "actions": [], "telemetry": telemetry}))


RECIPES = [
    {"name": "llama3-8b-seq8k-gpu-pretrain", "description": "Llama 3 8B pretraining, 8k context",
     "hardware": "8x H100 per node", "task": "pretrain", "path": "/x", "error": None},
    {"name": "llama3-tiny-seq256-cpu-pretrain", "description": "A tiny Llama on CPUs with gloo",
     "hardware": "CPU", "task": "pretrain", "path": "/x", "error": None},
    {"name": "mixtral-8x7b-seq4k-gpu-pretrain", "description": "Mixtral 8x7B MoE pretraining",
     "hardware": "8x H100 per node", "task": "pretrain", "path": "/x", "error": None},
]

SCRIPT = "#!/bin/bash\n#SBATCH --job-name=llama3-tiny\n#SBATCH --nodes=1\n#SBATCH --requeue\nsrun torchrun ...\n"


class RecordedProvider(Provider):
    """Answers from the recorded view; records the actions it was asked for."""

    label = "recorded · fixture"

    def __init__(self, view: ClusterView | None = None, fail_after: int | None = None) -> None:
        self.view = view or recorded_view()
        self.fail_after = fail_after
        self.fetches = 0
        self.actions: list[tuple[str, ...]] = []
        self.output = {f"{RUN}/slurm-41.out": "".join(f"step {i} loss {4 - i / 100:.2f}\n" for i in range(200))}

    def fetch(self) -> ClusterView:
        self.fetches += 1
        if self.fail_after is not None and self.fetches > self.fail_after:
            raise ProviderError("connection to root@login1 lost: EOF; reconnecting in 2s")
        return copy.deepcopy(self.view)

    def drain(self, node: str, reason: str) -> None:
        self.actions.append(("drain", node, reason))

    def resume(self, node: str) -> None:
        self.actions.append(("resume", node))

    def requeue(self, job_id: str) -> None:
        self.actions.append(("requeue", job_id))

    def cancel(self, job_id: str) -> None:
        self.actions.append(("cancel", job_id))

    def recipes(self) -> list[dict[str, Any]]:
        return RECIPES

    def preview(self, recipe: str, overrides: list[str]) -> LaunchPreview:
        bad = [o for o in overrides if o.startswith("trainer.max_stepz")]
        if bad:
            raise ProviderError(f"recipe {recipe}: override '{bad[0]}': no key trainer.max_stepz "
                                "(did you mean trainer.max_steps?)")
        return LaunchPreview(recipe, overrides, f"/shared/runs/{recipe}-20251201-090640", SCRIPT,
                             "name: llama3-tiny\ntrainer:\n  max_steps: 30\n")

    def launch(self, recipe: str, overrides: list[str]) -> Launched:
        self.actions.append(("launch", recipe, *overrides))
        return Launched("43", f"/shared/runs/{recipe}-20251201-090640")

    def read_output(self, path: str, offset: int) -> tuple[str, int]:
        data = self.output.get(path, "").encode()
        return data[offset:].decode(), len(data)

    def devices(self, node: str) -> list[dict[str, Any]] | None:
        return copy.deepcopy(DEVICES.get(node))
