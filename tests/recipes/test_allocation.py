"""Which nodes of its allocation a run's next step gets: the healthy ones, in order, the
fenced ones given back; too few, or a fenced batch host, means a requeue."""

from __future__ import annotations

from pitstop.model import Job, Node
from pitstop.recipes.allocation import RunningAttempt, pick, plan_resize, rendezvous_address


def _nodes(**states: str) -> dict[str, Node]:
    out = {}
    for name, label in states.items():
        state, *flags = label.split("+")
        out[name] = Node(name=name, state=state.upper(), flags=[f.upper() for f in flags], address="10.0.0.9")
    return out


JOB = Job(job_id="7", nodes=["n1", "n2", "n3"], batch_host="n1")


def test_all_healthy_takes_the_first_nodes_and_keeps_the_spare():
    chosen = pick(JOB, _nodes(n1="mixed", n2="allocated", n3="allocated"), 2)
    assert chosen.fits and chosen.step == ["n1", "n2"] and chosen.give_back == []
    assert chosen.spares == ["n3"]


def test_a_drained_node_is_replaced_by_the_spare_and_given_back():
    chosen = pick(JOB, _nodes(n1="mixed", n2="mixed+drain", n3="allocated"), 2)
    assert chosen.step == ["n1", "n3"] and chosen.give_back == ["n2"] and chosen.spares == []


def test_after_a_grow_the_step_takes_the_nodes_whose_servers_are_ready_before_the_grown_one():
    grown = Job(job_id="7", nodes=["n1", "n2", "n4"], batch_host="n1")  # n3 given back, n2 grown
    nodes = _nodes(n1="mixed", n2="mixed", n3="mixed+drain", n4="mixed")
    chosen = pick(grown, nodes, 2, first=["n1", "n3", "n4"])
    assert chosen.step == ["n1", "n4"] and chosen.spares == ["n2"]
    assert pick(grown, nodes, 2).step == ["n1", "n2"]  # without a preference: allocation order


def test_down_failed_rebooting_and_unresponsive_nodes_are_not_used():
    for label in ("down", "mixed+fail", "mixed+reboot_issued", "mixed+not_responding", "mixed+draining"):
        chosen = pick(JOB, _nodes(n1="mixed", n2=label, n3="allocated"), 2)
        assert chosen.step == ["n1", "n3"], label


def test_too_few_healthy_nodes_means_a_requeue():
    chosen = pick(JOB, _nodes(n1="mixed", n2="mixed+drain", n3="down"), 2)
    assert not chosen.fits
    assert "1 usable node(s) left in the allocation (n1), 2 needed" in chosen.unusable_reason
    assert chosen.give_back == ["n2", "n3"]


def test_a_fenced_batch_host_means_a_requeue_even_with_enough_nodes():
    chosen = pick(JOB, _nodes(n1="mixed+drain", n2="mixed", n3="allocated"), 2)
    assert not chosen.fits and "the batch host n1 is no longer usable (mixed+drain)" in chosen.unusable_reason


def test_a_node_slurm_no_longer_lists_is_not_used():
    chosen = pick(JOB, _nodes(n1="mixed", n3="allocated"), 2)
    assert chosen.step == ["n1", "n3"] and chosen.give_back == ["n2"]


def test_the_rendezvous_is_the_name_when_it_resolves_else_the_node_address():
    assert rendezvous_address(Node(name="localhost", state="IDLE", address="10.0.0.9")) == "localhost"
    assert rendezvous_address(Node(name="no-such-host.invalid", state="IDLE", address="10.0.0.9")) == "10.0.0.9"


def _attempts(run_dir, *records: str) -> None:
    (run_dir / "attempts.jsonl").write_text("".join(r + "\n" for r in records))


def test_the_keeper_sees_an_attempt_train_only_once_its_own_heartbeat_is_in(tmp_path):
    """The keeper resizes the job only while an attempt trains: its start is the last
    record and the heartbeat is its own (the last attempt's says nothing of this one)."""
    _attempts(tmp_path, '{"event": "start", "attempt": 0, "time": 100.0, "nodes": "n1,n2"}',
              '{"event": "end", "attempt": 0, "time": 150.5, "status": 137}',
              '{"event": "start", "attempt": 1, "time": 151.0, "nodes": "n1,n3"}')
    (tmp_path / "heartbeat.json").write_text('{"step": 40, "attempt": 0}')
    starting = RunningAttempt.read(str(tmp_path))
    assert not starting.trains and starting.last_end == 150.5
    (tmp_path / "heartbeat.json").write_text('{"step": 41, "attempt": 1}')
    assert RunningAttempt.read(str(tmp_path)).trains


def test_between_attempts_nothing_runs_and_the_last_end_is_known(tmp_path):
    _attempts(tmp_path, '{"event": "start", "attempt": 0, "time": 100.0, "nodes": "n1,n2"}',
              '{"event": "end", "attempt": 0, "time": 150.5, "status": 137}')
    (tmp_path / "heartbeat.json").write_text('{"step": 40, "attempt": 0}')
    between = RunningAttempt.read(str(tmp_path))
    assert not between.trains and between.last_end == 150.5
    assert RunningAttempt.read(None) == RunningAttempt()


def test_a_restart_gives_back_the_fenced_node_and_grows_only_when_too_few_without_overlap():
    nodes = _nodes(n1="mixed", n2="mixed+drain", n3="allocated", n4="idle")
    chosen = pick(JOB, nodes, 2)
    plan = plan_resize(JOB, nodes, chosen, need=2, total=3, overlap=False)
    assert plan.give_back == ["n2"] and plan.grow == 0  # the spare takes over; no grow
    short = pick(JOB, _nodes(n1="mixed", n2="mixed+drain", n3="down", n4="mixed"), 2)
    plan = plan_resize(JOB, _nodes(n1="mixed", n2="mixed+drain", n3="down", n4="mixed"), short, 2, 3, False)
    # too few: ask even where no node shows idle (a shared node may have room)
    assert plan.give_back == ["n2", "n3"] and (plan.grow, plan.at_least) == (2, 1)


def test_with_overlap_a_used_spare_is_replaced_at_the_restart_where_a_node_is_free():
    nodes = _nodes(n1="mixed", n2="mixed+drain", n3="allocated", n4="idle")
    plan = plan_resize(JOB, nodes, pick(JOB, nodes, 2), need=2, total=3, overlap=True)
    assert plan.give_back == ["n2"] and (plan.grow, plan.at_least) == (1, 1)
    busy = _nodes(n1="mixed", n2="mixed+drain", n3="allocated", n4="allocated")
    plan = plan_resize(JOB, busy, pick(JOB, busy, 2), need=2, total=3, overlap=True)
    assert plan.give_back == ["n2"] and plan.grow == 0  # none free: the fenced node still goes back
    healthy = _nodes(n1="mixed", n2="mixed", n3="allocated", n4="idle")
    assert not plan_resize(JOB, healthy, pick(JOB, healthy, 2), need=2, total=3, overlap=True)


def test_a_requeue_for_a_lost_batch_host_resizes_nothing():
    nodes = _nodes(n1="mixed+drain", n2="mixed", n3="allocated", n4="idle")
    assert not plan_resize(JOB, nodes, pick(JOB, nodes, 2), need=2, total=3, overlap=True)
