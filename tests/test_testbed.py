"""The testbed itself: shape, GRES, fault injection, isolation, clean shutdown, sshd."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from pitstop.testbed import faults
from pitstop.testbed.cluster import Testbed
from pitstop.testbed.config import Layout

pytestmark = pytest.mark.slurm


def _our_processes(directory: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(directory) in cmdline and proc.info["name"] in {"munged", "slurmctld", "slurmd", "sshd"}:
            found.append(cmdline)
        if proc.info["name"] == "slurmstepd":
            try:
                if any(str(directory) in f.path for f in proc.open_files()):
                    found.append(cmdline)
            except psutil.Error:
                pass
    return found


def test_every_node_sees_its_gpus(slurm, testbed):
    out = slurm.run(["srun", "-N4", "--gres=gpu:2", "bash", "-c",
                     'echo "$SLURMD_NODENAME $CUDA_VISIBLE_DEVICES"'], cwd=testbed.layout.jobs_dir)
    lines = sorted(out.split("\n")[:-1])
    assert lines == [f"node{i} 0,1" for i in range(1, 5)]


def test_up_again_is_harmless(testbed):
    before = testbed.status()["processes"]
    testbed.up(nodes=4, gpus_per_node=2)
    assert testbed.status()["processes"] == before


def test_up_with_another_shape_is_refused(testbed):
    from pitstop.testbed.procs import TestbedError
    with pytest.raises(TestbedError, match="down"):
        testbed.up(nodes=2, gpus_per_node=0)


def test_inject_writes_kmsg_records_in_order(testbed):
    layout = testbed.layout
    path = layout.kmsg_file("node3")
    before = path.read_text().splitlines()
    testbed.inject("node3", "xid:79:1")
    testbed.inject("node3", "xid:48", count=3)
    testbed.inject("node3", "neuron:sram")
    new = path.read_text().splitlines()[len(before):]
    assert len(new) == 5
    seqs = [int(line.split(",")[1]) for line in new]
    assert seqs == list(range(seqs[0], seqs[0] + 5)) and seqs[0] > int(before[-1].split(",")[1])
    assert new[0].endswith("NVRM: Xid (PCI:0000:2a:00): 79, pid=4001, name=python, GPU has fallen off the bus.")
    assert "NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR" in new[-1]
    assert all(line.split(";", 1)[0].count(",") == 3 for line in new)


def test_boot_lines_map_bus_ids_to_uuids(testbed):
    text = testbed.layout.kmsg_file("node1").read_text()
    assert "NVRM: GPU at PCI:0000:18:00: GPU-" in text and "NVRM: GPU at PCI:0000:2a:00: GPU-" in text


@pytest.mark.parametrize("fault, message", [
    ("xid:79:7", "does not exist"), ("xid:abc", "expected xid"), ("neuron:x", "neuron kinds"),
    ("melted", "unknown fault"),
])
def test_inject_rejects_bad_faults(testbed, fault, message):
    with pytest.raises(faults.FaultError, match=message):
        testbed.inject("node1", fault)


def test_inject_joblog_into_running_job_output(slurm, testbed):
    out = testbed.layout.jobs_dir / "victim.out"
    job_id = slurm.submit(testbed.layout.jobs_dir / "victim.sh", ["-N1", "-w", "node2", "-o", str(out)],
                          cwd=testbed.layout.jobs_dir) if (testbed.layout.jobs_dir / "victim.sh").write_text(
        "#!/bin/bash\nsleep 60\n") else None
    slurm.wait_for(lambda s: s.job(job_id).running, 20, what="job to run")
    message = testbed.inject("node2", "nccl-timeout")
    assert str(out) in message
    assert "Watchdog caught collective operation timeout" in out.read_text()
    slurm.cancel(job_id)


def test_slurmd_stop_makes_node_not_respond_and_start_brings_it_back(slurm, testbed):
    testbed.inject("node4", "slurmd-stop")
    assert not testbed.status()["processes"]["slurmd node4"]
    testbed.inject("node4", "slurmd-start")
    slurm.wait_for(lambda s: s.node("node4").available, 30, what="node4 to respond again")


def test_second_testbed_elsewhere_does_not_collide_and_down_leaves_nothing(testbed):
    directory = Path(tempfile.mkdtemp(prefix="pitstop-second-", dir="/tmp"))
    second = Testbed(directory)
    try:
        layout = second.up(nodes=1, gpus_per_node=0)
        ports = {layout.ctld_port, *layout.node_ports}
        first = testbed.layout
        assert not ports & {first.ctld_port, *first.node_ports}
        assert [n.name for n in second.slurm().nodes()] == ["node1"]
        assert len(testbed.slurm().nodes()) == 4
        job_id = second.slurm().submit(_script(directory), ["-o", str(directory / "jobs" / "j.out")],
                                       cwd=directory / "jobs")
        second.slurm().wait_for(lambda s: s.job(job_id).running, 20, what="job in second testbed")
        assert _our_processes(directory)
    finally:
        stopped = second.down()
    assert any(s.startswith("slurmctld") for s in stopped) and any(s.startswith("munged") for s in stopped)
    assert _our_processes(directory) == []
    assert testbed.status()["processes"]["slurmctld"]


def test_down_while_a_node_reboots_leaves_no_slurmd_behind(monkeypatch):
    """A node still "rebooting" when the testbed goes down (its RebootProgram's worker
    asleep) must not start its slurmd afterwards: one such slurmd outlived a demo and
    held the port a later testbed took."""
    from pitstop.waiting import wait_until

    monkeypatch.setenv("PITSTOP_TESTBED_REBOOT_DELAY", "60")
    directory = Path(tempfile.mkdtemp(prefix="pitstop-reboot-down-", dir="/tmp"))
    bed = Testbed(directory)

    def workers() -> list[int]:
        program = str(Layout.load(directory).reboot_program)
        return [p.pid for p in psutil.process_iter(["cmdline"]) if program in (p.info["cmdline"] or [])]

    try:
        bed.up(nodes=1, gpus_per_node=0)
        bed.slurm().reboot("node1", "pitstop: test reboot", nextstate="down")
        wait_until(workers, 30, what="the node's reboot to begin")
    finally:
        stopped = bed.down()
    assert any(s.startswith("slurmd") for s in stopped)
    # A worker that forked while down() looked finds slurmctld gone and quits on its own.
    wait_until(lambda: not workers(), 5, what="the reboot's worker to end")
    assert _our_processes(directory) == []


def _script(directory: Path) -> Path:
    path = directory / "jobs" / "sleep.sh"
    path.write_text("#!/bin/bash\nsrun sleep 120\n")
    return path


def test_status_reports_processes_and_nodes(testbed):
    info = testbed.status()
    assert info["exists"] and all(info["processes"].values())
    assert [n["name"] for n in info["nodes"]] == ["node1", "node2", "node3", "node4"]
    assert Layout.load(testbed.dir).nodes == 4


@pytest.mark.ssh
def test_sshd_accepts_known_host_and_runs_slurm_commands(testbed_ssh):
    import paramiko
    from pitstop.testbed.sshd import ssh_paths

    layout = testbed_ssh.layout
    paths = ssh_paths(layout)
    client = paramiko.SSHClient()
    client.load_host_keys(str(paths["known_hosts"]))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect("127.0.0.1", port=layout.ssh_port, username="root",
                   key_filename=str(paths["user_key"]), look_for_keys=False, allow_agent=False)
    _, stdout, _ = client.exec_command("sinfo -N -h -o %N")
    assert stdout.read().decode().split() == ["node1", "node2", "node3", "node4"]
    client.close()
    proc = subprocess.run(["ssh", "-F", str(paths["client_config"]), "pitstop-testbed", "echo", "ok"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.ssh
def test_sshd_unknown_host_key_is_refused(testbed_ssh, tmp_path):
    import paramiko
    from pitstop.testbed.sshd import ssh_paths

    layout = testbed_ssh.layout
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect("127.0.0.1", port=layout.ssh_port, username="root",
                       key_filename=str(ssh_paths(layout)["user_key"]), look_for_keys=False,
                       allow_agent=False)
