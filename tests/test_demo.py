"""`pitstop demo` end to end, without a terminal: the run survives its faults (one, or a
campaign of mixed ones), and the summary's figures agree with what the agents, Slurm and
the run directory recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pitstop.demo.runner import TICK_S  # how early an agent may stamp what it then read
from pitstop.rundir import iter_progress

pytestmark = pytest.mark.slurm

SMALL = ["model.dim=64", "model.n_layers=2", "model.ffn_dim=172", "model.n_heads=4",
         "model.n_kv_heads=2", "data.micro_batch_size=4", "trainer.step_delay=0.3"]
NODES = ("node1", "node2", "node3", "node4")
CAUSES = {"detection", "queue", "start_up", "checkpoint_load", "redone_steps", "other"}


def run_demo(directory: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pitstop", "demo", "--no-tui", "--dir", str(directory), *args]
    for override in SMALL:
        command += ["--override", override]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PITSTOP_TESTBED_REBOOT_DELAY": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    return proc


def agent_events(directory: Path, node: str) -> list[dict]:
    path = directory / "agents" / node / f"{node}.events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fencing_actions(directory: Path, node: str) -> list[dict]:
    return [e for e in agent_events(directory, node) if e["kind"] == "action" and e["action"] in
            {"drain", "down", "fail", "reboot"}]


def assert_lost_time_is_a_partition(summary: dict) -> None:
    lost = summary["lost_s"]
    assert set(lost) == CAUSES and all(seconds >= 0 for seconds in lost.values())
    assert abs(summary["wall_s"] - summary["productive_s"] - sum(lost.values())) < 1e-6
    assert 0 < summary["ettr"] <= 1


def test_demo_survives_a_dying_gpu_and_its_summary_matches_the_logs():
    directory = Path(tempfile.mkdtemp(prefix="pitstop-demo-test-", dir="/tmp"))
    out = run_demo(directory, "--steps", "20", "--fault-after", "12").stdout
    for text in ("FAULT 1", "agent: xid 79 gpu1 -> reboot", "pitstop: xid 79 gpu1", "end_step job",
                 "the step starts again in its allocation", "resumed from checkpoint step", "completed", "ETTR"):
        assert text in out, text
    report = json.loads((directory / "demo-summary.json").read_text())
    summary, (fault,) = report["summary"], report["faults"]
    assert summary["faults"] == summary["detected"] == 1 and summary["healthy_fenced"] == []
    assert summary["fenced_nodes"] == [fault["node"]]
    # The agent's own event log: one xid 79 decision on the faulty node, after the injection.
    events = agent_events(directory, fault["node"])
    decisions = [e for e in events if e["kind"] == "decision" and e["finding"]["code"] == "79"]
    assert len(decisions) == 1 and decisions[0]["time"] >= fault["at"] - TICK_S
    assert summary["time_to_detect_s"][0] == pytest.approx(max(0.0, decisions[0]["time"] - fault["at"]))
    for node in set(NODES) - {fault["node"]}:
        assert not fencing_actions(directory, node)
    steps = sorted({r["step"] for r in iter_progress(Path(report["run_dir"]))})
    assert steps == list(range(1, 21)) and summary["final_step"] == 20
    # One restart, in the allocation: the spare took the fenced node's place, no requeue.
    progress = list(iter_progress(Path(report["run_dir"])))
    assert summary["restarts"] == 1 == max(r["attempt"] for r in progress)
    assert max(r["restart_count"] for r in progress) == 0
    first, second = report["attempts"]
    assert fault["node"] in first["nodes"] and fault["node"] not in second["nodes"]
    # The time lost is a partition of wall - productive: every second counted once.
    assert_lost_time_is_a_partition(summary)
    lost = summary["lost_s"]
    assert lost["detection"] <= summary["time_to_detect_s"][0] + 1e-6
    # The restart's checkpoint load is the one the runtime reported on its start line.
    restart, out = second, (Path(report["run_dir"]) / f"slurm-{report['job_id']}.out").read_text()
    reported = [float(line.split("checkpoint load ")[1].split()[0]) for line in out.splitlines()
                if "training from step" in line]
    assert len(reported) == 2 and restart["load_s"] == reported[1] > 0
    assert 0 < lost["checkpoint_load"] <= reported[1] + 1e-6
    # The demo stops its testbed: nothing of it keeps running (a rebooted node's slurmd once did).
    assert "slurm" not in subprocess.run(["pgrep", "-af", str(directory)], capture_output=True,
                                             text=True).stdout


def test_a_campaign_of_mixed_faults_is_all_detected_and_fences_only_the_broken_nodes():
    """A slurmd that dies (its agent sets the node DOWN; Slurm ends the step there and
    removes the node from the job; the step starts again on the spare), a kernel-log XID
    48 on one node (drain; the step starts again on the spare) and an NCCL timeout in the
    job's log (the agent ends the step, which starts again on the same nodes): three
    detectors, exactly three restarts, all in the one allocation (the demo's warm start:
    every step overlaps, so none waits on cores Slurm miscounts after removing the dead
    node), each fault injected once the run trains again after the one before."""
    directory = Path(tempfile.mkdtemp(prefix="pitstop-demo-campaign-", dir="/tmp"))
    # The run must still be going through all three faults: each comes a second after the
    # run trains again, so all three are in by step 15 or so (warm restarts, and the agent
    # calls a dead slurmd's node DOWN at once); 60 steps leave room for a slow day.
    out = run_demo(directory, "--steps", "60", "--fault-after", "5", "--faults", "3", "--every", "1",
                   "--kinds", "slurmd,xid48,nccl", "--override", "trainer.checkpoint.interval=5",
                   timeout=900).stdout
    for text in ("FAULT 1", "FAULT 2", "FAULT 3", "-> drain", "collective_timeout", "slurmd started again",
                 "completed", "ETTR"):
        assert text in out, text
    report = json.loads((directory / "demo-summary.json").read_text())
    summary, faults = report["summary"], report["faults"]
    assert [f["kind"] for f in faults] == ["slurmd", "xid48", "nccl"]
    assert summary["faults"] == summary["detected"] == 3 and summary["healthy_fenced"] == []
    slurmd, xid, nccl = faults
    assert set(summary["fenced_nodes"]) == {xid["node"], slurmd["node"]}
    # Each detection is the one its detector logged, after its injection.
    decisions = [e for e in agent_events(directory, xid["node"])
                 if e["kind"] == "decision" and e["finding"]["code"] == "48"]
    assert len(decisions) == 1 and decisions[0]["action_class"] == "drain"
    assert xid["detected_at"] == pytest.approx(max(decisions[0]["time"], xid["at"]))
    timeouts = [e for node in NODES for e in agent_events(directory, node) if e["kind"] == "decision"
                and e["finding"]["signal"] == "collective_timeout" and e["time"] >= nccl["at"] - TICK_S]
    assert timeouts and nccl["detected_at"] == pytest.approx(max(min(e["time"] for e in timeouts), nccl["at"]))
    assert slurmd["detected_by"] == "agent" and slurmd["detected_at"] >= slurmd["at"]
    downs = [e for e in agent_events(directory, slurmd["node"]) if e["kind"] == "decision"
             and e["finding"]["signal"] == "slurmd_down"]
    assert len(downs) == 1 and downs[0]["action_class"] == "down"
    assert sorted(summary["time_to_detect_s"]) == pytest.approx(
        sorted(f["detected_at"] - f["at"] for f in faults))
    # No node but the two broken ones was fenced by any agent.
    assert fencing_actions(directory, xid["node"]) and fencing_actions(directory, slurmd["node"])
    for node in set(NODES) - {xid["node"], slurmd["node"]}:
        assert not fencing_actions(directory, node), node
    # The run: every step once in progress.jsonl, three restarts, each resumed from a checkpoint.
    progress = list(iter_progress(Path(report["run_dir"])))
    assert sorted(r["step"] for r in progress) == list(range(1, 61)) and summary["final_step"] == 60
    # One restart a fault, all in the allocation: no requeue.
    # (A give-back while the last step was still torn down had Slurm cancel the next step:
    # 4 restarts for 3 faults, before the allocation waited for the teardown.)
    assert summary["restarts"] == 3 == max(r["attempt"] for r in progress)
    assert [a["restart_count"] for a in report["attempts"]] == [0, 0, 0, 0]
    assert "restart 1: the step starts again in its allocation" in out and "after a requeue" not in out
    assert all(a["resumed_from"] > 0 for a in report["attempts"][1:])
    starts = [a["started_at"] for a in report["attempts"]]
    for fault in faults:  # each fault came while an attempt trained, and one started after it
        assert any(start < fault["at"] for start in starts) and any(start > fault["at"] for start in starts)
    assert len(summary["time_to_resume_s"]) == 3
    assert_lost_time_is_a_partition(summary)
    assert "slurm" not in subprocess.run(["pgrep", "-af", str(directory)], capture_output=True,
                                             text=True).stdout
