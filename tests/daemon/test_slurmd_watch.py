"""The slurmd source: the rule on observations and times alone, then the pid-file and
psutil edge on a real process named slurmd that is killed."""

from __future__ import annotations

import os
import shutil
import subprocess

import psutil
import pytest

from pitstop.daemon.policy import History, Policy
from pitstop.daemon.slurmd import SlurmdDetector, SlurmdReading, SlurmdWatch, read_slurmd
from pitstop.model import Finding
from pitstop.waiting import wait_until

PIDFILE = "/run/slurmd.pid"
ALIVE = SlurmdReading(4242, True)
GONE = SlurmdReading(None, False, "no pid file")


def detector(grace_s: float = 3.0) -> SlurmdDetector:
    return SlurmdDetector("node1", PIDFILE, grace_s)


def feed(det: SlurmdDetector, observations: list[tuple[float, SlurmdReading]]) -> list[tuple[float, list]]:
    """(time, findings) for each observation that produced any."""
    out = []
    for now, reading in observations:
        found = det.observe(reading, now)
        if found:
            out.append((now, found))
    return out


# ------------------------------------------------------------------------- the rule

def test_a_node_that_never_ran_slurmd_never_reports():
    det = detector()
    assert feed(det, [(t, GONE) for t in range(0, 600, 1)]) == []
    assert not det.armed


def test_a_death_after_slurmd_was_seen_reports_once_after_the_grace():
    det = detector(grace_s=3.0)
    reported = feed(det, [(0.0, ALIVE), (1.0, GONE), (2.0, GONE), (3.9, GONE), (4.0, GONE),
                          (5.0, GONE), (100.0, GONE)])
    assert [now for now, _ in reported] == [4.0]  # dead since 1.0: 3 s at 4.0
    (finding,) = reported[0][1]
    assert (finding.node, finding.signal, finding.code, finding.device, finding.source) == \
        ("node1", "slurmd_down", "", "", "slurmd")
    assert PIDFILE in finding.message and "4242" in finding.message and "no pid file" in finding.message
    assert finding.time == 4.0


def test_a_slurmd_back_inside_the_grace_is_no_death():
    det = detector(grace_s=3.0)
    assert feed(det, [(0.0, ALIVE), (1.0, GONE), (3.5, GONE), (3.6, SlurmdReading(5000, True)),
                      (4.5, GONE), (7.0, GONE)]) == []  # the clock starts again at 4.5
    assert det.alive_pid == 5000
    assert [now for now, _ in feed(det, [(7.5, GONE)])] == [7.5]


def test_seen_alive_again_rearms_and_the_next_death_reports_the_new_pid():
    det = detector(grace_s=2.0)
    first = feed(det, [(0.0, ALIVE), (1.0, GONE), (3.0, GONE), (10.0, GONE)])
    assert [now for now, _ in first] == [3.0]
    second = feed(det, [(20.0, SlurmdReading(777, True)), (21.0, SlurmdReading(777, False, "no process 777")),
                        (22.0, GONE), (23.0, GONE), (24.0, GONE)])
    assert [now for now, _ in second] == [23.0]
    assert "pid 777" in second[0][1][0].message


def test_the_policy_sets_the_node_down_and_a_repeat_this_boot_is_a_duplicate():
    policy = Policy.load(None)
    history = History(boot_id="b1")
    (finding,) = feed(detector(), [(0.0, ALIVE), (1.0, GONE), (4.0, GONE)])[0][1]
    decision = policy.decide(finding, 4.0, history)
    assert decision.action_class == "down" and decision.fences
    assert decision.reason.startswith("pitstop: slurmd_down slurmd (pid 4242")
    history.record(decision, 4.0)
    assert policy.decide(finding, 60.0, history).duplicate
    # A node already rebooting for a GPU this boot is fenced worse than down: no second action.
    rebooting = History(boot_id="b1")
    xid = Finding(node="node1", signal="xid", code="79", device="gpu0", message="fallen off the bus")
    rebooting.record(policy.decide(xid, 1.0, rebooting), 1.0)
    assert policy.decide(finding, 4.0, rebooting).duplicate


# ------------------------------------------------------------------------- the live edge

@pytest.fixture
def fake_slurmd(tmp_path):
    """A real process whose program is named slurmd (a copy of `sleep`), its pid file
    written, killed afterwards whatever the test did."""
    program = tmp_path / "slurmd"
    shutil.copy(shutil.which("sleep"), program)
    proc = subprocess.Popen([str(program), "300"], stdin=subprocess.DEVNULL)
    pidfile = tmp_path / "slurmd.pid"
    pidfile.write_text(f"{proc.pid}\n")
    try:
        yield proc, pidfile
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_running_slurmd_is_alive_and_a_killed_one_is_not(fake_slurmd):
    proc, pidfile = fake_slurmd
    assert read_slurmd(str(pidfile)) == SlurmdReading(proc.pid, True)
    proc.kill()
    # Not yet reaped: a zombie is dead too.
    wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, 10, what="a zombie")
    assert read_slurmd(str(pidfile)) == SlurmdReading(proc.pid, False, f"pid {proc.pid} is a zombie")
    proc.wait(timeout=10)
    assert read_slurmd(str(pidfile)) == SlurmdReading(proc.pid, False, f"no process {proc.pid}")


def test_a_pid_file_naming_another_program_or_nothing_is_not_slurmd(tmp_path):
    pidfile = tmp_path / "slurmd.pid"
    assert read_slurmd(str(pidfile)) == SlurmdReading(None, False, "no pid file")
    for text in ("", "slurmd\n", "0\n", "-1\n"):
        pidfile.write_text(text)
        assert read_slurmd(str(pidfile)) == SlurmdReading(None, False, "no pid in the pid file"), text
    pidfile.write_text(f"{os.getpid()}\n")  # a reused pid: this test's own python
    reading = read_slurmd(str(pidfile))
    assert (reading.pid, reading.alive) == (os.getpid(), False) and "not slurmd" in reading.detail


def test_the_watch_reports_a_killed_slurmd_once_after_the_grace(fake_slurmd):
    proc, pidfile = fake_slurmd
    watch = SlurmdWatch(str(pidfile), grace_s=2.0, node="node7")
    assert watch.poll(100.0) == [] and watch.detector.armed
    proc.kill()
    proc.wait(timeout=10)
    pidfile.unlink()  # as the testbed's slurmd-stop does
    assert watch.poll(101.0) == [] and watch.poll(102.9) == []
    (finding,) = watch.poll(103.0)
    assert finding.node == "node7" and finding.signal == "slurmd_down"
    assert str(pidfile) in finding.message and str(proc.pid) in finding.message
    assert watch.poll(104.0) == [] and watch.poll(500.0) == []


def test_the_watch_stays_quiet_where_slurmd_never_ran(tmp_path):
    watch = SlurmdWatch(str(tmp_path / "never.pid"), grace_s=0.0, node="node1")
    assert [watch.poll(float(t)) for t in range(10)] == [[]] * 10
    assert not watch.detector.armed
