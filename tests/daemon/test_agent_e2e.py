"""The node agent end to end: one real agent process per testbed node, faults written
where real ones arrive (the node's kernel log, a job's output, a heartbeat that stops),
and Slurm's own view checked for the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pitstop.waiting import wait_until

pytestmark = pytest.mark.slurm

AGENT_ARGS = ["--stall-floor", "4", "--stall-k", "4", "--kmsg-poll", "0.05"]


@pytest.fixture(scope="module")
def agents(testbed):
    """Agents on every node, for this whole module (other tests inject faults without
    agents watching)."""
    with testbed.agents_running(AGENT_ARGS) as bed:
        yield bed


def _state(layout, node: str) -> dict | None:
    try:
        return json.loads((layout.agent_state_dir(node) / f"{node}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _events(layout, node: str, kind: str | None = None) -> list[dict]:
    path = layout.agent_state_dir(node) / f"{node}.events.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    events = [json.loads(line) for line in lines if line.strip()]
    return [e for e in events if kind is None or e.get("kind") == kind]


def _job(slurm, testbed, nodes: str, body: str = "srun sleep 600", *args: str, name: str = "e2e",
         pinned: bool = True) -> str:
    """A job on `nodes` (pinned with -w), or on as many nodes as `nodes` names (not pinned:
    a requeued job may then run elsewhere)."""
    jobs = testbed.layout.jobs_dir
    script = jobs / f"{name}.sh"
    script.write_text(f"#!/bin/bash\n{body}\n")
    where = ["-w", nodes] if pinned else []
    job_id = slurm.submit(script, ["-J", name, "-N", str(len(nodes.split(","))), *where,
                                   "--requeue", "-o", str(jobs / f"{name}-%j.out"), *args], cwd=jobs)
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what=f"job {name} to run")
    return job_id


def _wait_decisions(layout, node: str, count: int, timeout: float = 15) -> list[dict]:
    return wait_until(lambda: (d := _events(layout, node, "decision")) and len(d) >= count and d,
                      timeout, what=f"{count} decision(s) by the agent on {node}")


def test_xid79_fences_the_node_names_the_gpu_and_the_job_runs_again(agents, slurm):
    layout = agents.layout
    job_id = _job(slurm, agents, "node1,node2", name="xid79", pinned=False)
    healthy, sick = slurm.job(job_id).nodes
    agents.inject(sick, "xid:79:1")
    fenced = slurm.wait_for(lambda s: (n := s.node(sick)) and n.fenced_by_pitstop and n, 10,
                            interval=0.05, what=f"{sick} fenced")
    assert "xid 79" in fenced.reason and "gpu1" in fenced.reason
    assert fenced.drained or fenced.failed
    job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.running and j.restart_count >= 1 and j,
                         60, interval=0.5, what="job to run again")
    assert job.restart_count == 1
    assert not slurm.node(healthy).reason and _state(layout, healthy)["health"] == "OK"
    assert not [a for a in _state(layout, healthy)["actions"]]
    # The job ran again elsewhere: a maintenance reservation holds the node from its reboot
    # on (Slurm 22.05 can "return to service" a nextstate=down node at a registration).
    # (`running` counts COMPLETING: wait for RUNNING, which the requeued job reaches after
    # its BeginTime wait.)
    again = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.state == "RUNNING" and j, 60, interval=0.5,
                           what="the requeued job to be RUNNING")
    assert again.nodes and sick not in again.nodes
    hold = f"reboot-hold-{sick}"
    slurm.cancel(job_id)  # from here on the node's own way back is under test
    # The node went through the testbed's reboot and came back into service only through
    # a passing `pitstop check full --resume`, which the agent ran as a process; the hold
    # lasted until then and no job ran on the node meanwhile.
    slurm.wait_for(lambda s: (n := s.node(sick)) and n.available and not n.reason and n, 150,
                   what=f"{sick} back through its check")
    actions = [a["action"] for a in _state(layout, sick)["actions"]]
    assert "hold" in actions and actions.index("hold") < actions.index("reboot")
    wait_until(lambda: slurm.reservation(hold) is None, 15, what="the hold to be released")
    wait_until(lambda: _state(layout, sick)["health"] == "OK", 15, what="the sick node's agent to say OK")
    checks = _events(layout, sick, "check")
    assert checks[0]["stage"] == "started" and checks[-1]["stage"] == "ended"
    assert checks[-1]["verdict"] == "in-service"
    boot = [e for e in _events(layout, sick, "boot")][-1]
    assert boot["time"] <= checks[0]["time"]
    assert (layout.agent_state_dir(sick) / f"{sick}.return-check.log").read_text().strip().endswith(f"{sick}: resumed")


def test_a_failing_return_check_fails_the_node_for_replacement(agents, slurm):
    """Back from its reboot, node4's full check finds a GPU missing: the node is failed
    with `Action:Replace`, and neither the agent nor Slurm returns it."""
    layout = agents.layout
    original = layout.hooks_config.read_text()
    layout.hooks_config.write_text(original + "nodes:\n  node4: {expected_gpus: 3}\n")
    try:
        agents.inject("node4", "xid:79:0")
        failed = slurm.wait_for(lambda s: (n := s.node("node4")) and n.failed and "Action:Replace" in n.reason and n,
                                90, interval=0.5, what="node4 failed for replacement by its return check")
        assert "gpu_count" in failed.reason
        state = wait_until(lambda: (st := _state(layout, "node4")) and st["health"] == "FENCED" and st,
                           15, what="node4's agent to record the replace fence")
        assert state["fence_class"] == "replace"
        ended = [c for c in _events(layout, "node4", "check") if c["stage"] == "ended"]
        assert ended and ended[-1]["verdict"] == "replace" and ended[-1]["returncode"] == 1
        # Still failed after the agent has looked at Slurm again (it reads every second).
        seen = time.time()
        wait_until(lambda: _state(layout, "node4")["updated_at"] > seen + 2, 20, what="the agent to save again")
        assert slurm.node("node4").failed and _state(layout, "node4")["health"] == "FENCED"
    finally:
        layout.hooks_config.write_text(original)
    # The operator swaps the GPU and resumes the node: the agent takes it as theirs.
    slurm.resume("node4")
    wait_until(lambda: _state(layout, "node4")["health"] == "OK", 15, what="node4's agent to accept the resume")


@pytest.mark.parametrize("code", [13, 31, 43, 45])
def test_application_xids_do_not_fence(agents, slurm, code):
    layout = agents.layout
    before = len(_events(layout, "node3", "decision"))
    agents.inject("node3", f"xid:{code}")
    decisions = _wait_decisions(layout, "node3", before + 1)
    assert decisions[-1]["action_class"] == "app" and decisions[-1]["finding"]["code"] == str(code)
    assert not slurm.node("node3").reason


def test_xid48_storm_is_one_finding_and_one_action_with_bounded_memory(agents, slurm):
    layout = agents.layout
    pid = int((layout.run_dir / "agent-node4.pid").read_text())
    rss_before = psutil.Process(pid).memory_info().rss
    agents.inject("node4", "xid:48", count=10_000)
    slurm.wait_for(lambda s: s.node("node4").fenced_by_pitstop, 15, what="node4 drained")
    state = wait_until(lambda: (st := _state(layout, "node4")) and
                       any("xid 48" in a["reason"] for a in st["actions"]) and st, 10,
                       what="the agent to record its action")
    drains = [a for a in state["actions"] if a["action"] == "drain" and "xid 48" in a["reason"]]
    xid48 = [f for f in state["open_findings"] if f["signal"] == "xid" and f["code"] == "48"]
    assert len(drains) == 1 and len(xid48) == 1, json.dumps(state, indent=1)[:3000]
    assert len([d for d in _events(layout, "node4", "decision") if d["finding"]["code"] == "48"]) == 1
    rss_after = psutil.Process(pid).memory_info().rss
    assert rss_after - rss_before < 32 * 1024 * 1024


def test_nccl_timeout_requeues_the_job_and_fences_nobody(agents, slurm):
    layout = agents.layout
    job_id = _job(slurm, agents, "node1,node3", name="nccl")
    wait_until(lambda: Path(slurm.job(job_id).stdout).exists(), 10, what="job output file")
    _wait_watching(layout, job_id)
    agents.inject("node1", "nccl-timeout")
    job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.restart_count >= 1 and j, 20,
                         what="job to be requeued")
    assert job.restart_count == 1
    assert not [n.name for n in slurm.nodes() if n.reason]


def test_nccl_timeout_with_xid74_fences_only_that_node(agents, slurm):
    layout = agents.layout
    job_id = _job(slurm, agents, "node1,node3", name="nccl74")
    _wait_watching(layout, job_id)
    agents.inject("node3", "xid:74")
    agents.inject("node1", "nccl-timeout")
    slurm.wait_for(lambda s: s.node("node3").fenced_by_pitstop, 15, what="node3 fenced")
    slurm.wait_for(lambda s: (j := s.job(job_id)) and j.restart_count >= 1, 20, what="requeue")
    assert "xid 74" in slurm.node("node3").reason
    assert not slurm.node("node1").reason


def _wait_watching(layout, job_id: str) -> None:
    """Wait until the agents of the job's nodes follow its output."""
    wait_until(lambda: len([n for n in layout.node_names if job_id in
                            ((_state(layout, n) or {}).get("telemetry", {}).get("jobs_watched", []))]) >= 2,
               15, what=f"agents to watch job {job_id}")


def test_stalled_step_is_found_and_the_job_requeued(agents, slurm):
    layout = agents.layout
    run_dir = layout.jobs_dir / "stall-run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text("name: stall\n")
    body = (f"for s in 1 2 3 4 5 6 7 8; do echo '{{\"step\": '$s', \"time\": '$(date +%s.%N)', "
            f"\"step_time\": 0.3}}' > {run_dir}/heartbeat.json.tmp && mv {run_dir}/heartbeat.json.tmp "
            f"{run_dir}/heartbeat.json; sleep 0.3; done; sleep 600")
    jobs = layout.jobs_dir
    script = jobs / "stall.sh"
    script.write_text(f"#!/bin/bash\n{body}\n")
    job_id = slurm.submit(script, ["-J", "stall", "-N1", "-w", "node2", "--requeue",
                                   "-o", str(run_dir / "slurm-%j.out")], cwd=jobs)
    started = time.time()
    job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.restart_count >= 1 and j, 40,
                         interval=0.5, what="the stalled job to be requeued")
    assert job.restart_count >= 1
    stalls = [e["finding"] for e in _events(layout, "node2", "finding") if e["finding"]["signal"] == "step_stall"]
    assert stalls and stalls[0]["job_id"] == job_id
    assert time.time() - started < 60  # long before any gloo (30 min) or NCCL (10 min) timeout


def test_operator_drain_is_never_resumed_by_the_agent(agents, slurm):
    slurm.drain("node2", "operator: swapping a PSU")
    agents.inject("node2", "xid:79:0")
    wait_until(lambda: any("operator" in a.get("detail", "") for a in _state(agents.layout, "node2")["actions"]),
               15, what=f"the agent to leave node2 alone: {[(e['time'], e['kind'], e.get('action_class'), e.get('finding', {}).get('code'), e.get('action'), e.get('reason')) for e in _events(agents.layout, 'node2')][-7:]}, now {time.time()}, {slurm.node('node2')}")
    node = slurm.node("node2")
    assert node.drained and node.reason == "operator: swapping a PSU"


def test_sigkill_and_restart_acts_once_and_catches_up(agents, slurm):
    layout = agents.layout
    pid_file = layout.run_dir / "agent-node3.pid"
    agents.inject("node3", "xid:95")
    wait_until(lambda: any(a["action"] == "drain" and "95" in a["reason"] for a in _state(layout, "node3")["actions"]),
               15, what="node3 drained for xid 95")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    wait_until(lambda: not agents.status()["processes"]["agent node3"], 10, what="agent to die")
    agents.inject("node3", "xid:79:1")  # written while the agent is down: worse than a drain
    agents.start_agent(layout, "node3", extra=AGENT_ARGS)
    wait_until(lambda: any(a["action"] == "reboot" and "79" in a["reason"] for a in _state(layout, "node3")["actions"]),
               20, what="node3 rebooted for the line written while the agent was down")
    actions = _state(layout, "node3")["actions"]
    assert [a["action"] for a in actions if "95" in a["reason"]] == ["drain"]
    assert len([d for d in _events(layout, "node3", "decision") if d["finding"]["code"] == "95"
                and not d["duplicate"]]) == 1
    slurm.wait_for(lambda s: s.node("node3").available, 30, what="node3 back from its reboot")


def test_fatal_xid_everywhere_trips_the_breaker(agents, slurm):
    layout = agents.layout
    # Every agent must be back to OK (a node rebooted by an earlier test is checked first).
    wait_until(lambda: all(_state(layout, n)["health"] == "OK" for n in layout.node_names), 60,
               what="every agent to report OK")
    for node in layout.node_names:
        agents.inject(node, "xid:64")
    wait_until(lambda: all(any(a["action"] in {"drain", "breaker"} and "64" in a.get("reason", "")
                               for a in _state(layout, n)["actions"]) for n in layout.node_names),
               60, what="every agent to decide about xid 64")
    fenced = [n.name for n in slurm.nodes() if n.fenced_by_pitstop]
    assert len(fenced) <= 2
    tripped = [n for n in layout.node_names
               if any(a["action"] == "breaker" for a in _state(layout, n)["actions"])]
    assert tripped and set(tripped).isdisjoint(fenced)


def test_malformed_policy_is_a_clear_error(tmp_path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("rules:\n  xid:\n    '79': explode\n")
    proc = subprocess.run([sys.executable, "-m", "pitstop", "agent", "run", "--config", "/dev/null",
                           "--policy", str(bad), "--node", "nodeX", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert f"{bad}:3" in proc.stderr
