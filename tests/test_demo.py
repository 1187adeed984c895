"""`pitstop demo` end to end, without a terminal: the run survives the fault, and the
summary's figures agree with what the agents, Slurm and the run directory recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pitstop.rundir import iter_progress

pytestmark = pytest.mark.slurm

SMALL = ["model.dim=64", "model.n_layers=2", "model.ffn_dim=172", "model.n_heads=4",
         "model.n_kv_heads=2", "data.micro_batch_size=4", "trainer.step_delay=0.3"]


def test_demo_survives_a_dying_gpu_and_its_summary_matches_the_logs():
    directory = Path(tempfile.mkdtemp(prefix="pitstop-demo-test-", dir="/tmp"))
    args = [sys.executable, "-m", "pitstop", "demo", "--no-tui", "--dir", str(directory), "--steps", "30",
            "--fault-after", "12"]
    for override in SMALL:
        args += ["--override", override]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PITSTOP_TESTBED_REBOOT_DELAY": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for text in ("FAULT 1", "agent: xid 79 gpu1 -> reboot", "pitstop: xid 79 gpu1", "requeue job",
                 "resumed from checkpoint step", "completed", "ETTR"):
        assert text in out, text
    report = json.loads((directory / "demo-summary.json").read_text())
    summary, (fault,) = report["summary"], report["faults"]
    assert summary["faults"] == summary["detected"] == 1 and summary["healthy_fenced"] == []
    assert summary["fenced_nodes"] == [fault["node"]]
    # The agent's own event log: one xid 79 decision on the faulty node, after the injection.
    events = [json.loads(line) for line in
              (directory / "agents" / fault["node"] / f"{fault['node']}.events.jsonl").read_text().splitlines()]
    decisions = [e for e in events if e["kind"] == "decision" and e["finding"]["code"] == "79"]
    assert len(decisions) == 1 and decisions[0]["time"] >= fault["at"]
    assert abs((decisions[0]["time"] - fault["at"]) - summary["time_to_detect_s"][0]) < 0.5
    others = [n for n in ("node1", "node2", "node3", "node4") if n != fault["node"]]
    for node in others:
        path = directory / "agents" / node / f"{node}.events.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        assert not [e for e in map(json.loads, lines) if e["kind"] == "action" and e["action"] in
                    {"drain", "fail", "reboot"}]
    steps = sorted({r["step"] for r in iter_progress(Path(report["run_dir"]))})
    assert steps == list(range(1, 31)) and summary["final_step"] == 30
    assert summary["restarts"] == 1 == max(r["restart_count"] for r in iter_progress(Path(report["run_dir"])))
    assert 0 < summary["ettr"] <= 1
    lost = sum(summary["lost_s"].values())
    assert abs(summary["wall_s"] - summary["productive_s"] - lost) < 0.5
    # The demo stops its testbed: nothing of it keeps running.
    assert "slurmctld" not in subprocess.run(["pgrep", "-af", str(directory)], capture_output=True,
                                             text=True).stdout
