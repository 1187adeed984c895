"""The job-log source: bounded tailing of job output and the collective-failure lines."""

from __future__ import annotations

import threading
import time

import pytest

from pitstop.daemon.joblogs import JobLogWatcher
from pitstop.daemon.tail import LineTailer
from pitstop.waiting import wait_until

WATCHDOG = ("[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1187, "
            "OpType=ALLREDUCE, NumelIn=..., NumelOut=..., Timeout(ms)=600000) ran for 600081 "
            "milliseconds before timing out.")
IB = "NET/IB : Got completion from peer 10.1.2.3<45678> with error 12, opcode 0, len 0, vendor err 129"
GLOO = ("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms "
        "for recv operation to complete")


def wait_for(condition, timeout=10.0, interval=0.01):
    return wait_until(condition, timeout, what="the condition", interval=interval)


def test_findings_carry_the_job_and_the_contract_names():
    watcher = JobLogWatcher("node1")
    found = watcher.findings("42", ["step 10 loss 2.3", WATCHDOG, IB, GLOO], now=5.0)
    assert [(f.signal, f.code, f.device, f.job_id) for f in found] == [
        ("collective_timeout", "nccl_watchdog", "", "42"),
        ("ib_error", "12", "10.1.2.3", "42"),
        ("collective_timeout", "gloo_timeout", "", "42")]
    assert all(f.node == "node1" and f.source == "joblogs" and f.time == 5.0 for f in found)


def test_every_rank_printing_the_timeout_is_one_finding_per_job():
    watcher = JobLogWatcher("node1")
    lines = [WATCHDOG.replace("Rank 3", f"Rank {r}") for r in range(8)]
    assert len(watcher.findings("42", lines, now=1.0)) == 1
    assert len(watcher.findings("43", lines, now=1.0)) == 1  # another job is another finding


def test_a_restarted_step_is_a_new_attempt_whose_timeouts_are_new_findings():
    """A run that restarts in its allocation keeps its job id: the batch script's line for
    each start marks the attempt, so the same timeout in the next attempt is a finding
    again (inside the quiet window) and each finding says which attempt it came from."""
    watcher = JobLogWatcher("node1")
    first = watcher.findings("42", ["pitstop: attempt 0 of job 42: the step starts on node1,node2",
                                    WATCHDOG, WATCHDOG], now=1.0)
    assert [(f.code, f.attempt) for f in first] == [("nccl_watchdog", 0)]
    assert watcher.findings("42", [WATCHDOG], now=2.0) == []  # same attempt: same episode
    again = watcher.findings("42", [WATCHDOG, "pitstop: attempt 1 of job 42: the step starts on node1,node3",
                                    WATCHDOG], now=3.0)
    assert [(f.code, f.attempt) for f in again] == [("nccl_watchdog", 1)]
    assert watcher.new_attempts == [("42", 0), ("42", 1)]
    # Another job's marker (a job id that only looks alike) is just a line.
    assert watcher.findings("4", ["pitstop: attempt 5 of job 42: the step starts on node9"], now=4.0) == []
    assert watcher.new_attempts == [("42", 0), ("42", 1)]


def test_a_watch_joining_a_later_attempt_stamps_its_findings_with_it(tmp_path):
    """An agent whose node joins a run at its third attempt reads the output from its
    end, past the attempt line: the attempt it is told at the watch stamps what follows."""
    out = tmp_path / "slurm-42.out"
    out.write_text("pitstop: attempt 2 of job 42: the step starts on node1,node3\n")
    watcher = JobLogWatcher("node3")
    watcher.watch("42", out, attempt=2)
    with open(out, "a") as fh:
        fh.write(WATCHDOG + "\n")
    assert [(f.code, f.attempt) for f in watcher.poll(now=1.0)] == [("nccl_watchdog", 2)]


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path):
    out = tmp_path / "slurm-42.out"
    watcher = JobLogWatcher("node1")
    watcher.watch("42", out)
    assert watcher.poll(1.0) == []
    out.write_text(f"starting\n{WATCHDOG}\n")
    assert [f.code for f in watcher.poll(2.0)] == ["nccl_watchdog"]


def test_an_existing_file_is_read_from_its_end(tmp_path):
    out = tmp_path / "slurm-42.out"
    out.write_text(f"{WATCHDOG}\n")  # the run before the requeue
    watcher = JobLogWatcher("node1")
    watcher.watch("42", out)
    assert watcher.poll(1.0) == []
    with open(out, "a") as fh:
        fh.write(f"{IB}\n")
    assert [f.signal for f in watcher.poll(2.0)] == ["ib_error"]
    old = JobLogWatcher("node1")
    old.watch("42", out, from_start=True)
    assert len(old.poll(3.0)) == 2


def test_a_file_another_process_appends_to_is_followed(tmp_path):
    out = tmp_path / "slurm-7.out"
    out.write_text("")
    watcher = JobLogWatcher("node1")
    watcher.watch("7", out)
    found = []

    def writer():
        with open(out, "a") as fh:
            for step in range(500):
                fh.write(f"step {step} loss 1.0\n")
            fh.write(WATCHDOG[:40])
            fh.flush()
            time.sleep(0.05)
            fh.write(WATCHDOG[40:] + "\n")

    thread = threading.Thread(target=writer)
    thread.start()
    wait_for(lambda: found.extend(watcher.poll(1.0)) or found)
    thread.join()
    assert [(f.code, f.job_id) for f in found] == [("nccl_watchdog", "7")]


def test_truncation_starts_over(tmp_path):
    out = tmp_path / "job.out"
    out.write_text("x" * 1000 + "\n")
    watcher = JobLogWatcher("node1")
    watcher.watch("1", out, from_start=True)
    assert watcher.poll(1.0) == []
    out.write_text(f"{GLOO}\n")
    assert [f.code for f in watcher.poll(2.0)] == ["gloo_timeout"]


def test_megabyte_lines_are_capped_not_held(tmp_path):
    out = tmp_path / "job.out"
    with open(out, "wb") as fh:
        fh.write(b"\r" + b"progress 50% " * 200_000)  # a progress bar, no newline, ~2.6 MB
        fh.write(b"\n" + IB.encode() + b"\n")
    tailer = LineTailer(out, max_line=64 * 1024, chunk=64 * 1024)
    lines = tailer.poll()
    assert len(lines) == 2 and len(lines[0]) <= 64 * 1024 and lines[1] == IB
    assert tailer.stats.truncated_lines == 1
    assert len(tailer._partial) == 0


def test_binary_garbage_does_not_break_the_watcher(tmp_path):
    import os
    out = tmp_path / "job.out"
    out.write_bytes(os.urandom(300_000) + b"\n" + WATCHDOG.encode() + b"\n")
    watcher = JobLogWatcher("node1")
    watcher.watch("9", out, from_start=True)
    assert [f.code for f in watcher.poll(1.0)] == ["nccl_watchdog"]


def test_tailer_position_resumes_at_the_partial_line(tmp_path):
    out = tmp_path / "job.out"
    out.write_bytes(b"one\ntwo\nthr")
    tailer = LineTailer(out)
    assert tailer.poll() == ["one", "two"]
    assert tailer.position.offset == 8
    resumed = LineTailer(out, position=tailer.position)
    with open(out, "ab") as fh:
        fh.write(b"ee\n")
    assert resumed.poll() == ["three"]


def test_unwatch_stops_following(tmp_path):
    out = tmp_path / "job.out"
    watcher = JobLogWatcher("node1")
    watcher.watch("5", out)
    assert watcher.jobs() == ["5"]
    watcher.unwatch("5")
    out.write_text(WATCHDOG + "\n")
    assert watcher.poll(1.0) == [] and watcher.jobs() == []


@pytest.mark.parametrize("line", ["", "\x00" * 100, "NET/IB : something else", "Timed out waiting"])
def test_near_misses_make_no_finding(line):
    assert JobLogWatcher("n").findings("1", [line], now=0.0) == []
