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
                Attempt(number=1, started_at=130.0, resumed_from=10)]
    summary = summarize(_steps(), [fault], attempts, started_at=95.0, finished_at=151.0,
                        fenced_nodes=["node2"])
    assert summary.faults == summary.detected == 1 and summary.healthy_fenced == []
    assert summary.steps_redone == 4 and summary.final_step == 20 and summary.restarts == 1
    assert summary.productive_s == 20.0 and summary.wall_s == 56.0
    assert abs(summary.ettr - 20 / 56) < 1e-9
    assert abs(summary.time_to_detect_s[0] - 0.2) < 1e-9
    assert summary.time_to_resume_s == [140.0 - 115.0]
    lost = summary.lost_s
    assert lost["detection"] == 2.0 and lost["queue"] == 13.0 and lost["redone_steps"] == 4.0
    assert lost["start_up_and_load"] == (140.0 - 130.0) + (100.0 - 95.0)
    assert abs(summary.wall_s - summary.productive_s - sum(lost.values())) < 1e-9
    assert "ETTR                  0.357" in format_summary(summary)


def test_a_healthy_node_fenced_is_named():
    fault = FaultInjected(kind="xid48", node="node3", at=1.0)
    summary = summarize([], [fault], [Attempt(number=0, started_at=0.0)], 0.0, 10.0, ["node3", "node1"])
    assert summary.healthy_fenced == ["node1"] and summary.detected == 0
