"""The progress source: a step that stops advancing is reported once, in time."""

from __future__ import annotations

from pitstop.daemon.progress import ProgressWatcher, StallDetector, stall_limit
from pitstop.fsutil import write_json_atomic
from pitstop.rundir import read_heartbeat


def beat(step, at, step_time=None):
    data = {"step": step, "time": at}
    if step_time is not None:
        data["step_time"] = step_time
    return data


def test_the_limit_is_the_floor_until_step_times_are_known():
    assert stall_limit([], k=5, floor_s=60) == 60
    assert stall_limit([1.0, 2.0, 100.0], k=5, floor_s=60) == 60
    assert stall_limit([20.0, 30.0, 25.0], k=5, floor_s=60) == 125


def test_no_heartbeat_no_finding():
    detector = StallDetector("n1", "42", floor_s=10)
    assert detector.observe(None, 1000.0) == []


def test_first_step_uses_the_floor():
    detector = StallDetector("n1", "42", k=5, floor_s=60)
    assert detector.observe(beat(0, 100.0), 100.0) == []
    assert detector.observe(beat(0, 100.0), 160.0) == []
    (finding,) = detector.observe(beat(0, 100.0), 160.5)
    assert (finding.signal, finding.job_id, finding.source) == ("step_stall", "42", "progress")
    assert "step 0" in finding.message and "floor 60s" in finding.message


def test_k_times_the_median_step_time():
    detector = StallDetector("n1", "42", k=5, floor_s=10)
    now = 0.0
    for step in range(1, 11):
        now = step * 4.0
        assert detector.observe(beat(step, now, step_time=4.0), now) == []
    assert detector.observe(beat(10, now), now + 20.0) == []  # 5 x 4 s
    (finding,) = detector.observe(beat(10, now), now + 20.5)
    assert "5 x median step 4.0s" in finding.message


def test_step_times_are_derived_when_the_heartbeat_lacks_them():
    detector = StallDetector("n1", "42", k=3, floor_s=1)
    for step in range(5):
        detector.observe(beat(step, step * 10.0), step * 10.0)
    assert list(detector.step_times) == [10.0, 10.0, 10.0, 10.0]
    assert detector.observe(beat(4, 40.0), 70.0) == []
    assert len(detector.observe(beat(4, 40.0), 70.1)) == 1


def test_one_finding_per_stalled_step():
    detector = StallDetector("n1", "42", k=5, floor_s=30)
    detector.observe(beat(3, 0.0), 0.0)
    assert len(detector.observe(beat(3, 0.0), 31.0)) == 1
    assert detector.observe(beat(3, 0.0), 500.0) == []
    assert detector.observe(beat(4, 600.0), 600.0) == []  # it moved again
    assert len(detector.observe(beat(4, 600.0), 631.0)) == 1


def test_a_restart_from_a_checkpoint_resets_the_step():
    detector = StallDetector("n1", "42", k=5, floor_s=30)
    detector.observe(beat(100, 0.0), 0.0)
    detector.observe(beat(100, 0.0), 40.0)
    assert detector.observe(beat(90, 50.0), 50.0) == []
    assert detector.step == 90 and detector.reported_step is None


def test_a_new_attempt_at_the_step_the_last_one_reached_starts_the_clock_afresh():
    """The last attempt beat step 10 and was ended; the restart resumes from step 9's
    checkpoint, and its first beat is step 10 again, six seconds later: no stall."""
    detector = StallDetector("n1", "42", k=5, floor_s=5)
    for step in range(1, 11):
        detector.observe({"step": step, "time": float(step), "step_time": 1.0, "attempt": 7}, float(step))
    assert detector.observe({"step": 10, "time": 16.0, "step_time": 1.5, "attempt": 8}, 16.0) == []
    assert detector.observe({"step": 10, "time": 16.0, "attempt": 8}, 20.0) == []
    assert detector.step == 10 and detector.advanced_at == 16.0
    assert len(detector.observe({"step": 10, "time": 16.0, "attempt": 8}, 21.5)) == 1  # a real stall still is


def test_the_last_attempts_heartbeat_is_not_judged_while_the_next_one_starts():
    """The batch script started attempt 1; the heartbeat still is attempt 0's, whose step
    was ended: attempt 1 is starting up, so only the start-up limit (4 x floor) holds."""
    detector = StallDetector("n1", "42", k=5, floor_s=5)
    for step in range(1, 6):
        detector.observe({"step": step, "time": float(step), "step_time": 1.0, "attempt": 0}, float(step), 0)
    old = {"step": 5, "time": 5.0, "attempt": 0}
    assert detector.observe(old, 6.0, current_attempt=1) == []
    assert detector.observe(old, 25.0, current_attempt=1) == []  # 19 s of start-up: allowed
    (finding,) = detector.observe(old, 26.5, current_attempt=1)
    assert "no step in 20s" in finding.message and finding.attempt == 1
    fresh = StallDetector("n1", "42", k=5, floor_s=5)
    fresh.observe(old, 5.0, 0)
    fresh.observe(old, 6.0, current_attempt=1)
    assert fresh.observe({"step": 5, "time": 9.0, "attempt": 1}, 9.0, 1) == []  # its first step
    assert fresh.observe({"step": 5, "time": 9.0, "attempt": 1}, 13.0, 1) == []
    assert len(fresh.observe({"step": 5, "time": 9.0, "attempt": 1}, 14.5, 1)) == 1


def test_a_starts_first_steps_get_the_settling_allowance_then_the_usual_limit():
    detector = StallDetector("n1", "42", k=5, floor_s=5, settle_factor=2.0, settle_steps=3)
    detector.observe(beat(10, 0.0, 1.0), 0.0)  # the first beat of a restart
    assert detector.observe(beat(10, 0.0), 9.0) == []  # a slow first step: 9 s of 10 allowed
    for step, at in ((11, 9.0), (12, 10.0), (13, 11.0)):
        assert detector.observe(beat(step, at, 1.0), at) == []
    assert detector.steps_seen == 3
    (finding,) = detector.observe(beat(13, 11.0), 16.5)  # settled: max(5, 5 x 1 s)
    assert "floor 5s" in finding.message


def test_a_heartbeat_from_before_watching_does_not_count():
    detector = StallDetector("n1", "42", floor_s=60, watching_since=1000.0)
    assert detector.observe(beat(7, 10.0), 1001.0) == []  # left over from the run before
    # Start-up is not a stall at the step floor (the run may be loading its checkpoint) ...
    assert detector.observe(beat(7, 10.0), 1061.0) == []
    # ... but a run that makes no first step within the start-up limit is.
    (found,) = detector.observe(beat(7, 10.0), 1241.0)
    assert "since the run started" in found.message
    assert detector.observe(None, 1300.0) == []  # reported once
    assert detector.observe(beat(8, 1290.0), 1301.0) == []  # the run got going


def test_malformed_heartbeats_are_ignored():
    detector = StallDetector("n1", "42", floor_s=1)
    for junk in ({}, {"step": "x"}, {"step": True, "time": 1}, {"step": None}):
        assert detector.observe(junk, 100.0) == []
    assert detector.step is None


def test_watcher_reads_the_run_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    watcher = ProgressWatcher("n1", k=5, floor_s=60)
    watcher.watch("42", run, now=0.0)
    assert watcher.poll(10.0) == []  # no heartbeat yet
    write_json_atomic(run / "heartbeat.json", {"step": 1, "time": 5.0, "step_time": 2.0})
    assert read_heartbeat(run)["step"] == 1
    assert watcher.poll(20.0) == []
    assert watcher.poll(66.0) == []  # the first steps of a start: twice the floor
    (finding,) = watcher.poll(126.0)
    assert finding.job_id == "42" and finding.node == "n1" and "the first steps of a start" in finding.message
    watcher.unwatch("42")
    assert watcher.poll(1000.0) == []


def test_the_watchers_start_up_limit_is_its_own_setting(tmp_path):
    """A cold start (a fresh machine's page cache, a large checkpoint to load) may take
    longer to its first step than 4 x a floor tuned for steps."""
    run = tmp_path / "run"
    run.mkdir()
    watcher = ProgressWatcher("n1", k=5, floor_s=5, startup_s=60)
    watcher.watch("42", run, now=0.0)
    assert watcher.poll(59.0) == []  # 4 x the floor (20 s) is long past
    (finding,) = watcher.poll(61.0)
    assert "start-up limit 60s" in finding.message
    default = ProgressWatcher("n1", k=5, floor_s=5)
    default.watch("42", run, now=0.0)
    assert default.poll(19.0) == [] and len(default.poll(21.0)) == 1
