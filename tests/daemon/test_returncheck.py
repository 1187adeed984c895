"""The return check's process handling and what its exit means, on real processes."""

from __future__ import annotations

import sys
import time

import psutil

from pitstop.daemon.returncheck import (CHECK_NICENESS, FAILED, PASSED, REFUSED, TIMED_OUT, CheckResult, ReturnCheck,
                                        check_command, interpret, last_line)
from pitstop.waiting import wait_until


# A check that starts a child, says so, and never ends.
HUNG_WITH_A_CHILD = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
                     " print('started', flush=True); time.sleep(600)")


def _check(tmp_path, code: str, timeout: float = 30.0) -> ReturnCheck:
    return ReturnCheck([sys.executable, "-c", code], tmp_path / "check.log", timeout)


def test_the_command_is_the_hooks_own_full_check_with_resume():
    args = check_command("node7", "/etc/pitstop/hooks.yaml", python="/usr/bin/python3")
    assert args == ["/usr/bin/python3", "-m", "pitstop", "check", "full", "--resume", "--node", "node7",
                    "--config", "/etc/pitstop/hooks.yaml"]
    assert "--config" not in check_command("node7", None)


def test_exit_status_and_output_tail_come_back(tmp_path):
    check = _check(tmp_path, "import sys; print('gpu_count: ok'); print('node7: failed: pitstop: Action:Replace x', file=sys.stderr); sys.exit(1)")
    check.start()
    assert check.running
    result = wait_until(lambda: check.poll(), 30, what="the check to end")
    assert result.returncode == FAILED and not check.running
    assert last_line(result.tail) == "node7: failed: pitstop: Action:Replace x"
    assert "gpu_count: ok" in (tmp_path / "check.log").read_text()


def test_the_check_and_the_workers_it_starts_yield_the_cpu(tmp_path):
    """Niced, so that where nodes share a host the check does not slow a job's ranks."""
    check = _check(tmp_path, HUNG_WITH_A_CHILD)
    check.start()
    try:
        wait_until(lambda: "started" in (tmp_path / "check.log").read_text(), 30, what="the check to start its child")
        process = psutil.Process(check.pid)
        assert process.nice() >= CHECK_NICENESS > psutil.Process().nice()
        assert [child.nice() for child in process.children()] == [process.nice()]
    finally:
        check.kill()


def test_a_hung_check_is_killed_with_its_children_at_the_deadline(tmp_path):
    check = _check(tmp_path, HUNG_WITH_A_CHILD, timeout=1.0)
    check.start()
    pid = check.pid
    wait_until(lambda: "started" in (tmp_path / "check.log").read_text(), 30, what="the check to start its child")
    children = psutil.Process(pid).children(recursive=True)
    assert children
    result = wait_until(lambda: check.poll(), 30, what="the deadline")
    assert result.timed_out and result.returncode == TIMED_OUT and result.seconds >= 1.0
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children), 10,
               what="the check's child to be killed too")


def test_kill_stops_a_running_check_and_nothing_is_reported(tmp_path):
    check = _check(tmp_path, "import time; time.sleep(600)")
    check.start()
    pid = check.pid
    check.kill()
    assert not check.running and check.poll() is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_what_each_ending_means_for_the_node():
    def result(code):
        return CheckResult(code, 1.0, "")
    assert interpret(result(PASSED), True) == "in-service"
    assert interpret(result(FAILED), True) == "replace"
    assert interpret(result(TIMED_OUT), True) == "replace"
    assert interpret(result(REFUSED), False) == "operator"
    assert interpret(result(REFUSED), True) == "retry"  # a job on the node: try again later
    assert interpret(result(2), True) == "retry"  # a broken install is not the node's fault
    assert interpret(result(-9), True) == "retry"
