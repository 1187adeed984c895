"""The hooks on a real Slurm testbed: the Prolog keeps a bad node out of a job, the
HealthCheckProgram resumes only what a quick check fenced, `check cluster` names a slow
node, and a fenced node returns to service only through a passing full check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pitstop.hooks.install import InstallPlan, conf_values, edit_conf
from pitstop.testbed.cluster import Testbed
from pitstop.testbed.config import LENIENT_THRESHOLDS, TINY_FULL

pytestmark = pytest.mark.slurm


def pitstop(*args, env=None, timeout=120):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pitstop", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)
    proc.seconds = time.monotonic() - started
    return proc


@pytest.fixture(scope="module")
def prolog_bed():
    """A private two-node testbed with pitstop's Prolog and Epilog in its slurm.conf, and a
    hooks config in which node1 expects more GPUs than it has."""
    directory = Path(tempfile.mkdtemp(prefix="pitstop-hooks-", dir="/tmp"))
    bed = Testbed(directory)
    try:
        layout = bed.up(nodes=2, gpus_per_node=2, timeout=60)
        config = directory / "hooks.yaml"
        config.write_text(f"accelerator_glob: {layout.dev_dir}/nvidia[0-9]*\nexpected_gpus: 2\n"
                          "nodes:\n  node1: {expected_gpus: 4}\n")
        plan = InstallPlan(prefix=Path("/"), python=sys.executable, slurm_conf=layout.slurm_conf,
                           hooks_config=str(config))
        for hook in ("prolog", "epilog", "healthcheck"):
            (directory / "bin" / hook).write_text(plan.wrapper(hook))
            (directory / "bin" / hook).chmod(0o755)
        text = layout.slurm_conf.read_text()
        settings = {k: v for k, v in plan.conf_settings(conf_values(text)).items()
                    if k in ("PrologFlags", "SchedulerParameters")}
        settings.update(Prolog=str(directory / "bin" / "prolog"), Epilog=str(directory / "bin" / "epilog"))
        layout.slurm_conf.write_text(edit_conf(text, settings))
        slurm = bed.slurm()
        slurm.run(["scontrol", "reconfigure"])
        for node in layout.node_names:  # slurmd reads Prolog= at start: restart, don't race
            bed.stop_slurmd(layout, node)
            bed.start_slurmd(layout, node)
        bed.wait_idle(layout, 30)
        yield bed, config
    finally:
        bed.down()
        shutil.rmtree(directory, ignore_errors=True)


def test_prolog_drains_the_failing_node_and_the_job_runs_on_another(prolog_bed):
    bed, _ = prolog_bed
    layout, slurm = bed.layout, bed.slurm()
    script = layout.jobs_dir / "where.sh"
    script.write_text("#!/bin/sh\necho \"ran on $SLURMD_NODENAME\"\n")
    job_id = slurm.submit(script, ["--output", str(layout.jobs_dir / "where-%j.out")])
    job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.state == "COMPLETED" and j, 60,
                         what="the job to complete on a healthy node")
    assert (layout.jobs_dir / f"where-{job_id}.out").read_text().strip() == "ran on node2"
    assert job.nodes == ["node2"]
    node1 = slurm.node("node1")
    assert node1.drained and not node1.available
    assert node1.reason.startswith("pitstop: quick check failed (prolog): gpu_count: 2 GPU(s) found, 4 expected")


def test_prolog_and_healthcheck_stay_far_inside_slurms_limits(prolog_bed):
    """Run the wrappers as slurmd runs a HealthCheckProgram: SLURMD_NODENAME and nothing
    else in the environment (no PATH, no SLURM_CONF)."""
    bed, _ = prolog_bed
    timings = {}
    for hook in ("prolog", "healthcheck"):
        started = time.monotonic()
        proc = subprocess.run([str(bed.dir / "bin" / hook)], env={"SLURMD_NODENAME": "node2"},
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        timings[hook] = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        assert "quick check pass" in proc.stderr
    print(", ".join(f"{hook} {seconds:.2f}s" for hook, seconds in timings.items()), "(Slurm's limit: 60 s)")
    assert max(timings.values()) < 15
    assert bed.slurm().node("node2").reason == ""


def test_healthcheck_resumes_what_a_quick_check_fenced_and_leaves_operators_alone(prolog_bed):
    bed, config = prolog_bed
    slurm = bed.slurm()
    fixed = config.with_name("fixed.yaml")
    fixed.write_text(f"accelerator_glob: {bed.layout.dev_dir}/nvidia[0-9]*\nexpected_gpus: 2\n")
    slurm.drain("node1", "pitstop: quick check failed (healthcheck): gpu_count: 1 GPU(s) found")
    slurm.drain("node2", "bad DIMM, ticket 4711 -- ops")
    for node in ("node1", "node2"):
        result = pitstop("hooks", "healthcheck", "--config", str(fixed),
                         env={**bed.layout.env(), "SLURMD_NODENAME": node})
        assert result.returncode == 0, result.stderr
    resumed = slurm.node("node1")
    assert not resumed.drained and resumed.reason == ""
    still = slurm.node("node2")
    assert still.drained and still.reason == "bad DIMM, ticket 4711 -- ops"
    failing = pitstop("hooks", "healthcheck", "--config", str(config),
                      env={**bed.layout.env(), "SLURMD_NODENAME": "node1"})
    assert failing.returncode == 1
    assert slurm.node("node1").reason.startswith("pitstop: quick check failed (healthcheck): gpu_count")
    slurm.resume(["node1", "node2"])


def test_check_cluster_names_the_slowed_node(slurm, testbed, tmp_path):
    env = {**testbed.layout.env(), "PITSTOP_TEST_SLOW_RANK": "node3", "PITSTOP_TEST_SLOW_SECONDS": "0.1"}
    result = pitstop("check", "cluster", "node[1-4]", "--json", "--out-dir", str(tmp_path),
                     "--size-mib", "1", "--iterations", "5", "--timeout", "120", env=env, timeout=180)
    print(f"check cluster on 4 nodes: {result.seconds:.1f}s")
    assert result.stdout.startswith("{"), result.stderr
    report = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    assert report["slow_nodes"] == ["node3"] and report["slow_links"] == []
    assert {n["node"] for n in report["per_node"]} == {"node1", "node2", "node3", "node4"}
    assert len(report["pairs"]) == 6 and report["all_busbw_gbs"] > 0
    slow_pairs = {p["a"] + "-" + p["b"] for p in report["pairs"] if p["outlier"]}
    assert slow_pairs == {"node1-node3", "node2-node3", "node3-node4"}


def test_fence_reboot_full_check_resumes_and_a_failing_one_replaces(slurm, testbed, tmp_path):
    layout = testbed.layout
    (tmp_path / "thresholds.yaml").write_text(LENIENT_THRESHOLDS)
    config = tmp_path / "full.yaml"
    config.write_text(TINY_FULL + f"thresholds_file: {tmp_path / 'thresholds.yaml'}\ndevice_model: lenient\n")
    env = {**layout.env()}
    old_boot = testbed.boot_id_file(layout, "node4").read_text()
    slurm.drain("node4", "pitstop: xid 79 on gpu1 (test)")
    slurm.reboot("node4", "pitstop: reboot after xid 79", nextstate="down")
    slurm.wait_for(lambda s: (n := s.node("node4")) and "NOT_RESPONDING" not in n.flags and
                   not {"REBOOT_ISSUED", "REBOOT_REQUESTED"} & set(n.flags) and
                   testbed.boot_id_file(layout, "node4").read_text() != old_boot,
                   30, what="node4 back from its reboot with a new boot")
    # Back from the reboot, pitstop holds the node until its full check passes (the
    # testbed's ReturnToService=2 would otherwise return a DOWN node on its own).
    slurm.drain("node4", "pitstop: rebooted after xid 79; awaiting full check")
    assert not slurm.node("node4").available

    passed = pitstop("check", "full", "--resume", "--node", "node4", "--config", str(config), env=env)
    print(f"check full --resume: {passed.seconds:.1f}s")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "node4: resumed" in passed.stderr
    slurm.wait_for(lambda s: s.node("node4").available, 10, what="node4 in service")

    slurm.drain("node4", "pitstop: xid 48 on gpu0 (test)")
    failed = pitstop("check", "full", "--resume", "--node", "node4", "--config", str(config),
                     env={**env, "PITSTOP_TEST_CORRUPT_DEVICE": "1"})
    assert failed.returncode == 1
    node = slurm.node("node4")
    assert node.failed and node.reason.startswith("pitstop: Action:Replace full check failed: sdc cpu1")

    slurm.drain("node3", "waiting for a new PSU -- ops")
    refused = pitstop("check", "full", "--resume", "--node", "node3", "--config", str(config), env=env)
    assert refused.returncode == 3 and "not pitstop's" in refused.stderr
    assert slurm.node("node3").reason == "waiting for a new PSU -- ops"
    slurm.resume(["node3", "node4"])


def test_epilog_checks_after_a_failed_job_only(prolog_bed):
    bed, _ = prolog_bed
    slurm = bed.slurm()
    epilog = str(bed.dir / "bin" / "epilog")
    ok = subprocess.run([epilog], env={"SLURMD_NODENAME": "node1", "SLURM_JOB_EXIT_CODE2": "0:0"},
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and not slurm.node("node1").drained
    failed = subprocess.run([epilog], env={"SLURMD_NODENAME": "node1", "SLURM_JOB_EXIT_CODE2": "1:0"},
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 0, failed.stderr  # our reason, not Slurm's "Epilog error"
    node = slurm.node("node1")
    assert node.drained and node.reason.startswith("pitstop: quick check failed (epilog): gpu_count")
    slurm.resume("node1")


def test_slurmd_runs_the_healthcheck_which_drains_then_resumes_once_fixed(prolog_bed):
    """slurmd itself runs HealthCheckProgram when it starts: node1's check fails (it expects
    four GPUs) and it is drained; with the settings fixed, the next run resumes it."""
    bed, config = prolog_bed
    layout, slurm = bed.layout, bed.slurm()
    original_conf, original_config = layout.slurm_conf.read_text(), config.read_text()
    try:
        layout.slurm_conf.write_text(original_conf + f"HealthCheckProgram={bed.dir / 'bin' / 'healthcheck'}\n"
                                                     "HealthCheckInterval=3600\n")
        slurm.run(["scontrol", "reconfigure"])
        bed.stop_slurmd(layout, "node1")
        bed.start_slurmd(layout, "node1")
        drained = slurm.wait_for(lambda s: (n := s.node("node1")) and n.drained and n, 30,
                                 what="slurmd's health check to drain node1")
        assert drained.reason.startswith("pitstop: quick check failed (healthcheck): gpu_count")
        config.write_text(original_config.replace("expected_gpus: 4", "expected_gpus: 2"))
        bed.stop_slurmd(layout, "node1")
        bed.start_slurmd(layout, "node1")
        slurm.wait_for(lambda s: (n := s.node("node1")) and not n.drained and n.reason == "", 30,
                       what="slurmd's health check to resume node1")
    finally:
        config.write_text(original_config)
        layout.slurm_conf.write_text(original_conf)
        slurm.run(["scontrol", "reconfigure"])


def test_the_quick_check_sees_the_real_agent_alive_then_gone(prolog_bed, tmp_path):
    from pitstop.hooks.checks import CheckContext, run_level
    from pitstop.hooks.config import load_config
    from pitstop.testbed.config import free_port_block
    from pitstop.waiting import wait_until
    bed, _ = prolog_bed
    layout = bed.layout
    port = free_port_block(1)
    config = tmp_path / "agent.yaml"
    config.write_text(f"agent_port: {port}\n")

    def agent_check():
        return run_level("quick", CheckContext(load_config(config, node="node2")), ["agent"])[0]

    bed.start_agent(layout, "node2", port, ["--dry-run"])
    try:
        alive = wait_until(lambda: (r := agent_check()).status == "pass" and r, 30,
                           what="the agent's /status to answer", interval=0.2)
        assert str(port) in alive.message
    finally:
        bed.stop_agent(layout, "node2")
    gone = agent_check()
    assert gone.status == "fail" and "refused" in gone.message.lower()
