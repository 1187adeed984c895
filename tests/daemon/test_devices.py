"""The state file's per-device table: built from recorded NVML readings and the open
findings, and written by a real agent process replaying a recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pitstop.daemon
from pitstop.daemon.devices import device_rows
from pitstop.daemon.neuron import NeuronDeviceReading, NeuronReport
from pitstop.daemon.nvml import NvmlReplay, NvmlState, NvmlThresholds, findings_from_readings
from pitstop.waiting import wait_until

DATA = Path(pitstop.daemon.__file__).parent / "data"
DBE = DATA / "nvml-recorded-8xh100-dbe.jsonl"


def _open_findings(findings, action_class="drain"):
    return [{**f.to_dict(), "action_class": action_class} for f in findings]


def test_every_gpu_is_a_row_and_the_one_with_a_double_bit_error_is_unhealthy():
    state, found = NvmlState(), []
    for poll in NvmlReplay(DBE).polls():
        new, state = findings_from_readings("n1", poll, state, NvmlThresholds(expected_gpus=8), 0.0)
        found += new
        readings = poll
    bad = {f.device for f in found}
    assert bad
    rows = device_rows(gpus=readings, findings=_open_findings(found))
    assert [r["device"] for r in rows] == [f"gpu{i}" for i in range(8)]
    assert {r["device"] for r in rows if not r["healthy"]} == bad
    sick = next(r for r in rows if not r["healthy"])
    assert sick["finding"] and sick["readings"]["uuid"].startswith("GPU-")
    assert sick["readings"]["ecc_dbe_volatile"] is not None
    assert all(r["finding"] is None for r in rows if r["healthy"])


def test_a_watch_finding_names_the_device_but_leaves_it_healthy():
    rows = device_rows(paths=["/dev/nvidia1", "/dev/nvidia0"],
                       findings=[{"device": "gpu1", "action_class": "watch", "message": "hot"}])
    assert rows == [
        {"device": "gpu1", "kind": "gpu", "healthy": True, "finding": "hot", "readings": {"path": "/dev/nvidia1"}},
        {"device": "gpu0", "kind": "gpu", "healthy": True, "finding": None, "readings": {"path": "/dev/nvidia0"}},
    ]


def test_neuron_devices_carry_their_ecc_counters():
    report = NeuronReport(devices=[NeuronDeviceReading(0), NeuronDeviceReading(1, mem_ecc_uncorrected=2)])
    rows = device_rows(neuron=report, findings=[{"device": "nd1", "action_class": "replace", "message": "ecc"}])
    assert [(r["device"], r["kind"], r["healthy"]) for r in rows] == [("nd0", "neuron", True), ("nd1", "neuron", False)]
    assert rows[1]["readings"]["mem_ecc_uncorrected"] == 2


@pytest.mark.slurm
def test_the_agent_writes_the_table_from_a_replayed_recording(testbed, tmp_path):
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    env = {**os.environ, **testbed.layout.env()}
    proc = subprocess.Popen([sys.executable, "-m", "pitstop", "agent", "run", "--config", "/dev/null", "--dry-run",
                             "--node", "n1", "--kmsg", str(kmsg), "--boot-id-file", str(boot),
                             "--state-dir", str(tmp_path / "state"), "--port", "0", "--interval", "0.2",
                             "--nvml", f"replay:{DBE}", "--neuron", "off", "--expected-gpus", "8"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = tmp_path / "state" / "n1.json"

    def table():
        try:
            devices = json.loads(state_file.read_text())["telemetry"].get("devices") or []
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None
        return devices if len(devices) == 8 and any(not d["healthy"] for d in devices) else None

    try:
        devices = wait_until(table, 60, what="the agent to write eight GPUs, one unhealthy")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    sick = [d for d in devices if not d["healthy"]]
    assert sick[0]["readings"]["ecc_dbe_volatile"] and sick[0]["finding"]
