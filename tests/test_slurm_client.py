"""Every call of the Slurm client against the real testbed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pitstop.slurm import Slurm, SlurmError

pytestmark = pytest.mark.slurm

NASTY_REASON = 'pitstop: it\'s "bad"; $(touch /tmp/pitstop-pwned) `id` & | > x'


def submit(slurm: Slurm, testbed, body: str, *args: str, name: str = "t") -> str:
    script = Path(testbed.layout.jobs_dir) / f"{name}-{os.getpid()}-{slurm.calls}.sh"
    script.write_text(f"#!/bin/bash\n{body}\n")
    return slurm.submit(script, ["-J", name, "-o", str(testbed.layout.jobs_dir / "%x-%j.out"), *args],
                        cwd=testbed.layout.jobs_dir)


def test_snapshot_reads_nodes_and_jobs_in_two_calls(slurm, testbed):
    job_id = submit(slurm, testbed, "sleep 60", "-N2", "--gres=gpu:1", name="snap")
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="job to run")
    before = slurm.calls
    snapshot = slurm.snapshot()
    assert slurm.calls - before == 2
    assert {n.name for n in snapshot.nodes} == {"node1", "node2", "node3", "node4"}
    job = next(j for j in snapshot.jobs if j.job_id == job_id)
    assert job.running and len(job.nodes) == 2 and job.name == "snap"
    assert job.stdout == str(testbed.layout.jobs_dir / f"snap-{job_id}.out")
    assert job.work_dir == str(testbed.layout.jobs_dir)
    for name in job.nodes:
        node = snapshot.node(name)
        assert job_id in node.jobs and node.gpus == 2 and node.gpus_used == 1
    assert snapshot.jobs_on(job.nodes[0]) == [job]


def test_json_reads_agree_with_format_reads(slurm):
    json_client = Slurm(env=slurm.env, use_json=True)
    assert slurm.version().has_json
    by_format = {n.name: (n.state, n.cpus, n.gres) for n in slurm.nodes()}
    by_json = {n.name: (n.state, n.cpus, n.gres) for n in json_client.nodes()}
    assert by_format == by_json


def test_drain_with_hostile_reason_shows_exactly_and_resume_returns_idle(slurm, tmp_path):
    slurm.drain("node2", NASTY_REASON)
    node = slurm.node("node2")
    assert node.drained and node.reason == NASTY_REASON and node.fenced_by_pitstop
    assert node.reason_user == "root"
    sinfo_r = slurm.run(["sinfo", "-R", "-h", "-o", "%E|%N"])
    assert f"{NASTY_REASON}|node2" in sinfo_r
    assert not Path("/tmp/pitstop-pwned").exists()
    slurm.resume("node2")
    node = slurm.wait_for(lambda s: (n := s.node("node2")) and not n.drained and n, 10, what="resume")
    assert node.state == "IDLE" and node.reason == ""


def test_fail_marks_node_failed(slurm):
    slurm.fail("node3", "pitstop: Action:Replace xid 79 gpu0")
    node = slurm.node("node3")
    assert node.failed and node.reason == "pitstop: Action:Replace xid 79 gpu0"
    slurm.resume("node3")


def test_reasons_with_newlines_are_one_line(slurm):
    slurm.drain(["node1", "node4"], "pitstop: first\nsecond")
    nodes = {n.name: n for n in slurm.nodes()}
    assert nodes["node1"].reason == nodes["node4"].reason == "pitstop: first second"
    slurm.resume("node[1,4]")


@pytest.mark.parametrize("bad", ["node1; touch /tmp/pitstop-pwned", "$(id)", "node 1", "", "node1\nnode2"])
def test_hostile_node_names_never_reach_slurm(slurm, bad):
    before = slurm.calls
    with pytest.raises(ValueError):
        slurm.drain(bad, "pitstop: x")
    assert slurm.calls == before
    assert not Path("/tmp/pitstop-pwned").exists()


def test_unknown_node_is_a_slurm_error_with_command_and_stderr(slurm):
    with pytest.raises(SlurmError) as info:
        slurm.drain("node99", "pitstop: x")
    assert info.value.cmd[:2] == ["scontrol", "update"]
    assert info.value.returncode not in (0, None)
    assert "node99" in info.value.stderr or "Invalid node name" in info.value.stderr


def test_requeue_moves_a_running_job_to_other_nodes(slurm, testbed):
    job_id = submit(slurm, testbed, "srun sleep 300", "-N1", "--requeue", name="mover")
    job = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.running and j, 20, what="job to run")
    first = job.nodes[0]
    slurm.drain(first, "pitstop: test requeue")
    slurm.requeue(job_id)
    moved = slurm.wait_for(lambda s: (j := s.job(job_id)) and j.running and j.nodes != [first] and j,
                           60, interval=0.5, what="requeued job to run elsewhere")
    assert first not in moved.nodes and moved.restart_count == 1
    slurm.cancel(job_id)
    slurm.resume(first)


def test_hold_release_cancel(slurm, testbed):
    slurm.drain("node[1-4]", "pitstop: keep the job pending")
    job_id = submit(slurm, testbed, "sleep 1", "-N1", name="held")
    slurm.hold(job_id)
    held = slurm.job(job_id)
    assert held.pending and "held" in held.reason.lower() or held.reason == "JobHeldUser"
    slurm.release(job_id)
    assert "held" not in slurm.job(job_id).reason.lower()
    slurm.cancel(job_id)
    assert slurm.wait_for(lambda s: s.job(job_id).state == "CANCELLED", 10, what="cancel")
    slurm.resume("node[1-4]")


def test_job_details_and_unknown_job(slurm, testbed):
    job_id = submit(slurm, testbed, "sleep 30", "-N1", name="detail job")
    details = slurm.wait_for(lambda s: (d := s.job_details(job_id)) and d.get("JobState") == "RUNNING" and d,
                             20, what="job to run")
    assert details["JobName"] == "detail job"
    assert slurm.job("999999") is None
    with pytest.raises(ValueError):
        slurm.job("1; rm -rf /")


def test_reboot_asap_reboots_the_node_and_it_returns(slurm, testbed):
    layout = testbed.layout
    boot_file = testbed.boot_id_file(layout, "node4")
    old_boot = boot_file.read_text()
    slurm.reboot("node4", "pitstop: reboot for xid 79")
    node = slurm.wait_for(lambda s: (n := s.node("node4")) and
                          ({"REBOOT_ISSUED", "REBOOT_REQUESTED"} & set(n.flags)) and n,
                          10, interval=0.05, what="reboot to be requested")
    assert node.reason.startswith("pitstop: reboot for xid 79")
    # The testbed's RebootProgram restarts node4's slurmd with a new boot, as a real reboot would.
    back = slurm.wait_for(lambda s: (n := s.node("node4")) and n.available and n, 30,
                          what="node4 back in service")
    assert back.state == "IDLE" and back.reason == ""
    assert boot_file.read_text() != old_boot
    assert "testbed boot" in layout.kmsg_file("node4").read_text()


def test_reservation_create_list_delete(slurm):
    slurm.create_reservation("pitstop-test-s1", start="now+1hour", duration="10", node_count=1,
                             flags=["REPLACE_DOWN"])
    (resv,) = [r for r in slurm.reservations() if r.name == "pitstop-test-s1"]
    assert resv.node_count == 1 and "REPLACE_DOWN" in resv.flags and resv.users == ["root"]
    with pytest.raises(SlurmError, match="Invalid partition") as info:
        slurm.create_reservation("pitstop-test-s2", start="now", duration="10", node_count=1,
                                 partition="nope")
    assert "reservation not created" in str(info.value)
    slurm.delete_reservation("pitstop-test-s1")
    assert not [r for r in slurm.reservations() if r.name.startswith("pitstop-test")]


def test_submit_failure_is_a_slurm_error(slurm, tmp_path):
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    with pytest.raises(SlurmError) as info:
        slurm.submit(script, ["--partition=nope"])
    assert info.value.cmd[0] == "sbatch" and "invalid partition" in info.value.stderr.lower()


def test_reservation_on_busy_nodes_is_refused(slurm, testbed):
    job_id = submit(slurm, testbed, "sleep 300", "-N4", "--exclusive", name="busy")
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="job to run")
    with pytest.raises(SlurmError, match="busy"):
        slurm.create_reservation("pitstop-test-busy", start="now", duration="10", node_count=2)
    assert not [r for r in slurm.reservations() if r.name == "pitstop-test-busy"]


def test_timeout_is_a_slurm_error(testbed, tmp_path):
    slow = tmp_path / "sinfo"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    client = Slurm(env=testbed.layout.env(), bin_dir=tmp_path, timeout=0.5)
    with pytest.raises(SlurmError, match="timed out"):
        client.nodes()


def test_commands_are_argument_lists_only(slurm):
    with pytest.raises(TypeError):
        slurm.run("sinfo -N")


def test_set_down_and_update_job(slurm, testbed):
    slurm.set_down("node3", "pitstop: test down")
    node = slurm.node("node3")
    assert node.down and node.reason == "pitstop: test down"
    slurm.resume("node3")
    slurm.drain("node[1-4]", "pitstop: keep it pending")
    job_id = submit(slurm, testbed, "sleep 1", "-N1", "-t", "10", name="limit")
    slurm.update_job(job_id, TimeLimit="3")
    assert slurm.job(job_id).time_limit == 180
    with pytest.raises(ValueError):
        slurm.update_job(job_id, **{"TimeLimit=1 Partition": "x"})
    slurm.cancel(job_id)
    slurm.resume("node[1-4]")


def test_a_running_job_gives_back_and_grows_again_and_again(slurm, testbed):
    """A node given back, a free one added, twice over, and a step runs on the added node:
    a job resizes more than once only where Slurm keeps an accounting database (the
    testbed runs slurmdbd, as clusters do). The helper allocation is gone afterwards."""
    import subprocess

    job_id = submit(slurm, testbed, "sleep 300", "-N2", "-w", "node1,node2", "--no-kill", name="resizer")
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="the job to run")
    drained: list[str] = []
    try:
        for _ in range(2):
            leaving = next(n for n in slurm.job(job_id).nodes if n != "node1")
            slurm.shrink_job(job_id, ["node1"])
            slurm.drain(leaving, "pitstop: given back")  # so the growth takes a node new to the job
            drained.append(leaving)
            assert slurm.job(job_id).nodes == ["node1"]
            added = slurm.grow_job(slurm.job(job_id), 1)
            assert len(added) == 1 and added[0] not in ["node1", *drained]
            assert slurm.job(job_id).nodes == sorted(["node1", *added])
        step = subprocess.run(["srun", f"--jobid={job_id}", "--overlap", "-N1", "-n1", f"-w{added[0]}",
                               "printenv", "SLURMD_NODENAME"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, **testbed.layout.env()})
        assert step.returncode == 0 and step.stdout.strip() == added[0], step.stderr
        assert [j.job_id for j in slurm.jobs() if not j.finished] == [job_id]
    finally:
        slurm.cancel(job_id)
        for node in drained:
            slurm.resume(node)


def test_grow_finds_no_free_node_and_says_so_with_nothing(slurm, testbed):
    job_id = submit(slurm, testbed, "sleep 300", "-N1", "-w", "node1", "--no-kill", name="crowded")
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="the job to run")
    slurm.drain("node[2-4]", "pitstop: nothing free")
    try:
        assert slurm.grow_job(slurm.job(job_id), 1, immediate_s=1) == []
        assert slurm.job(job_id).nodes == ["node1"]
        assert [j.job_id for j in slurm.jobs() if not j.finished] == [job_id]
    finally:
        slurm.cancel(job_id)
        slurm.resume("node[2-4]")


def test_steps_leave_out_the_named_ones(slurm, testbed):
    job_id = submit(slurm, testbed, "srun -N1 -n1 -J keepme sleep 300 &\nsrun -N1 -n1 --overlap -J doomed sleep 300 &\nwait",
                    "-N1", "-w", "node3", name="named")
    try:
        steps = slurm.wait_for(lambda s: len(found := s.steps(job_id)) == 2 and found, 20,
                               what="both steps to run")
        kept = slurm.steps(job_id, exclude_names=["keepme"])
        assert len(kept) == 1 and set(kept) < set(steps) and list(kept.values()) == [["node3"]]
    finally:
        slurm.cancel(job_id)
