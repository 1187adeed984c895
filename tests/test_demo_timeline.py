"""The demo's summary arithmetic on a hand-made history."""

from pitstop.demo.timeline import Attempt, FaultInjected, StepSeen, format_summary, redone, summarize


def _steps():
    # Attempt 0 runs steps 1-14 (a second each), a fault at t=115, checkpoint at step 10;
    # attempt 1 starts at t=130, first step done at t=141, redoes 11-14, then runs to 20.
    steps = [StepSeen(step=s, attempt=0, loss=10 - s * 0.1, step_time=1.0, ended_at=100 + s)
             for s in range(1, 15)]
    steps += [StepSeen(step=s, attempt=1, loss=10 - s * 0.1, step_time=1.0, ended_at=141 + (s - 11))
              for s in range(11, 21)]
    return steps


def test_redone_steps_are_the_earlier_runs_of_steps_run_again():
    assert sorted(s.step for s in redone(_steps())) == [11, 12, 13, 14]


def test_summary_figures():
    fault = FaultInjected(kind="xid79", node="node2", at=115.0, detected_at=115.2, detected_by="agent")
    attempts = [Attempt(number=0, started_at=95.0, requeued_at=117.0),
                Attempt(number=1, started_at=130.0, resumed_from=10, load_s=2.0)]
    summary = summarize(_steps(), [fault], attempts, started_at=95.0, finished_at=151.0,
                        fenced_nodes=["node2"])
    assert summary.faults == summary.detected == 1 and summary.healthy_fenced == []
    assert summary.steps_redone == 4 and summary.final_step == 20 and summary.restarts == 1
    assert summary.productive_s == 20.0 and summary.wall_s == 56.0
    assert abs(summary.ettr - 20 / 56) < 1e-9
    assert abs(summary.time_to_detect_s[0] - 0.2) < 1e-9
    assert summary.time_to_resume_s == [140.0 - 115.0]
    # Every second is productive or exactly one cause: the last step before the fault
    # ended at 114, the step under way until the fault at 115 is thrown away (redone), the
    # agent noticed at 115.2, attempt 1 started at 130 and loaded its checkpoint for the
    # last 2 s before its first step at 140; the final save is "other".
    assert _close(summary.lost_s, {"detection": 0.2, "queue": 14.8, "start_up": 5.0 + 8.0,
                                   "checkpoint_load": 2.0, "redone_steps": 4.0 + 1.0, "other": 1.0})
    assert abs(summary.wall_s - summary.productive_s - sum(summary.lost_s.values())) < 1e-9
    text = format_summary(summary)
    assert "ETTR                  0.357" in text and "together 36.0s = wall - productive" in text


def test_steps_that_ran_past_the_fault_are_redone_not_detection_and_gaps_are_other():
    # A slurmd dies at t=103.5 but the steps go on until 108 (Slurm notices at 110); the
    # steps are 0.5 s with 0.5 s between them, which no cause claims.
    steps = [StepSeen(step=s, attempt=0, loss=1.0, step_time=0.5, ended_at=100 + s) for s in range(1, 9)]
    steps += [StepSeen(step=s, attempt=1, loss=1.0, step_time=0.5, ended_at=120 + s) for s in range(4, 11)]
    fault = FaultInjected(kind="slurmd", node="node1", at=103.5, detected_at=110.0, detected_by="slurm")
    attempts = [Attempt(number=0, started_at=99.0, requeued_at=111.0),
                Attempt(number=1, started_at=121.0, load_s=10.0)]
    summary = summarize(steps, [fault], attempts, started_at=99.0, finished_at=131.0, fenced_nodes=[])
    # Redone: steps 4-8 of attempt 0; detection only after the last of them ended (108).
    # Attempt 0's first step starts at 100.5 (1.5 s of start-up); attempt 1's at 123.5: its
    # reported 10 s load is capped at the 2.5 s between its start and that step. The
    # final save after the last step (130 to 131) is "other".
    assert summary.steps_redone == 5 and summary.productive_s == 10 * 0.5
    gaps = 0.5 * (8 - 1) + 0.5 * (7 - 1)  # between the steps of each attempt
    assert _close(summary.lost_s, {"detection": 2.0, "queue": 11.0, "start_up": 1.5,
                                   "checkpoint_load": 2.5, "redone_steps": 2.5, "other": gaps + 1.0})
    assert abs(summary.wall_s - summary.productive_s - sum(summary.lost_s.values())) < 1e-9


def test_a_step_that_hung_on_a_stopped_rank_is_detection_then_queue_not_productive():
    # Steps of 1 s; step 11 (started at 101) hangs on a stopped rank until the agent's
    # requeue wakes and stops it: it ends at 116 after 15 s. The agent noticed at 114.
    steps = [StepSeen(step=s, attempt=0, loss=1.0, step_time=1.0, ended_at=90 + s) for s in range(1, 11)]
    steps.append(StepSeen(step=11, attempt=0, loss=1.0, step_time=15.0, ended_at=116.0))
    steps += [StepSeen(step=s, attempt=1, loss=1.0, step_time=1.0, ended_at=112 + s) for s in range(12, 16)]
    fault = FaultInjected(kind="stall", node="node2", at=101.5, detected_at=114.0)
    attempts = [Attempt(number=0, started_at=90.0, requeued_at=115.5),
                Attempt(number=1, started_at=120.0, load_s=1.0)]
    summary = summarize(steps, [fault], attempts, started_at=90.0, finished_at=128.0, fenced_nodes=[])
    # Productive: steps 1-10, the last typical second of step 11, steps 12-15. The hang:
    # detection 101-114, then the queue 114-115 and 116-120; the gap 100-101 and the final
    # save 127-128 are other.
    assert summary.productive_s == 15.0
    assert _close(summary.lost_s, {"detection": 13.0, "queue": 5.0, "start_up": 2.0,
                                   "checkpoint_load": 1.0, "redone_steps": 0.0, "other": 2.0})


def test_lost_time_partitions_the_wall_time_whatever_the_overlaps():
    # Overlapping and out-of-order observations (a step reported to end after the next
    # attempt started, a detection before the fault's last step) still add up exactly.
    steps = [StepSeen(step=1, attempt=0, loss=1.0, step_time=4.0, ended_at=10.0),
             StepSeen(step=2, attempt=0, loss=1.0, step_time=4.0, ended_at=13.0),
             StepSeen(step=2, attempt=1, loss=1.0, step_time=2.0, ended_at=14.5)]
    fault = FaultInjected(kind="nccl", node="node2", at=9.0, detected_at=9.5)
    attempts = [Attempt(number=0, started_at=5.0, requeued_at=11.0),
                Attempt(number=1, started_at=12.0, load_s=1.0)]
    summary = summarize(steps, [fault], attempts, started_at=5.0, finished_at=20.0, fenced_nodes=[])
    assert summary.wall_s == 15.0
    assert abs(summary.productive_s + sum(summary.lost_s.values()) - 15.0) < 1e-9
    assert all(seconds >= 0 for seconds in summary.lost_s.values())


def _close(got: dict, want: dict) -> bool:
    assert set(got) == set(want), got
    assert all(abs(got[k] - want[k]) < 1e-9 for k in want), got
    return True


def test_a_healthy_node_fenced_is_named():
    fault = FaultInjected(kind="xid48", node="node3", at=1.0)
    summary = summarize([], [fault], [Attempt(number=0, started_at=0.0)], 0.0, 10.0, ["node3", "node1"])
    assert summary.healthy_fenced == ["node1"] and summary.detected == 0


def test_the_demo_gives_each_rank_its_share_of_the_hosts_cores(monkeypatch):
    from pitstop.demo import runner

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    assert runner.threads_per_rank(procs_per_node=1) == 1  # two nodes, one rank each, two cores
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 16)
    assert runner.threads_per_rank(procs_per_node=2) == 4
    monkeypatch.setattr(runner.os, "cpu_count", lambda: None)
    assert runner.threads_per_rank(procs_per_node=2) == 1
