"""The health state: transitions, persistence, the event log, corrupt files."""

from __future__ import annotations

import json
import logging

import pytest

from pitstop.daemon.health import HealthStore, InvalidTransition, NodeState
from pitstop.daemon.policy import History, Policy
from pitstop.model import Finding, Health

POLICY = Policy.load()


def decision(signal, code="", now=100.0, history=None, **kw):
    f = Finding(node="node1", signal=signal, code=code, device="gpu0", time=now, **kw)
    return POLICY.decide(f, now, history or History(boot_id="b1"))


def test_a_new_node_is_ok_and_saves_the_documented_shape(tmp_path):
    store = HealthStore.open(tmp_path, "node1")
    assert store.health == Health.OK
    store.save()
    data = json.loads((tmp_path / "node1.json").read_text())
    assert set(data) == {"version", "node", "health", "fence_class", "reason", "since",
                         "updated_at", "boot_id", "open_findings", "actions", "counters", "history",
                         "telemetry"}
    assert (data["version"], data["node"], data["health"]) == (1, "node1", "OK")


def test_watch_makes_suspect_and_a_fence_makes_fenced(tmp_path):
    store = HealthStore.open(tmp_path, "node1")
    assert store.apply(decision("xid", "38"), 10.0)
    assert store.health == Health.SUSPECT
    assert store.apply(decision("xid", "79", message="GPU has fallen off the bus."), 20.0)
    assert (store.health, store.state.fence_class) == (Health.FENCED, "reboot")
    assert store.state.reason == "pitstop: xid 79 gpu0 GPU has fallen off the bus"
    assert [f["code"] for f in store.state.open_findings] == ["38", "79"]
    store.save()
    again = HealthStore.open(tmp_path, "node1")
    assert again.state == store.state


def test_the_reboot_cycle_back_to_ok(tmp_path):
    store = HealthStore.open(tmp_path, "node1")
    store.on_boot("boot-1", 0.0)
    store.apply(decision("xid", "79"), 10.0)
    store.transition(Health.REBOOTING, 11.0)
    store.save()
    after = HealthStore.open(tmp_path, "node1")
    assert after.on_boot("boot-2", 100.0)
    assert after.health == Health.CHECKING
    after.transition(Health.OK, 120.0)
    assert after.state.fence_class is None and after.state.reason == ""


def test_a_fenced_reboot_whose_agent_died_is_checked_after_the_boot(tmp_path):
    store = HealthStore.open(tmp_path, "node1")
    store.on_boot("boot-1", 0.0)
    store.apply(decision("row_remap_pending"), 10.0)
    assert store.state.fence_class == "reboot"
    assert store.on_boot("boot-2", 50.0) and store.health == Health.CHECKING
    assert not store.on_boot("boot-2", 60.0)


@pytest.mark.parametrize("moves,bad", [
    ([], (Health.REBOOTING, None)),
    ([], (Health.CHECKING, None)),
    ([(Health.FENCED, "drain")], (Health.OK, None)),
    ([(Health.FENCED, "reboot")], (Health.FENCED, "drain")),
    ([(Health.FENCED, "reboot")], (Health.CHECKING, None)),
    ([(Health.FENCED, "replace")], (Health.REBOOTING, None)),
    ([(Health.FENCED, "replace")], (Health.CHECKING, None)),
    ([(Health.FENCED, "down")], (Health.FENCED, "drain")),
    ([(Health.FENCED, "down")], (Health.REBOOTING, None)),
    ([(Health.FENCED, "down")], (Health.CHECKING, None)),
    ([(Health.FENCED, "down")], (Health.OK, None)),
    ([], (Health.FENCED, None)),
    ([], (Health.FENCED, "watch")),
    ([(Health.SUSPECT, None)], (Health.CHECKING, None)),
])
def test_invalid_transitions_are_refused(tmp_path, moves, bad):
    store = HealthStore(tmp_path, "node1")
    for to, klass in moves:
        store.transition(to, 1.0, fence_class=klass)
    before = store.state.to_dict()
    with pytest.raises(InvalidTransition):
        store.transition(bad[0], 2.0, fence_class=bad[1])
    assert store.state.to_dict() == before


def test_replace_waits_for_a_person(tmp_path):
    store = HealthStore(tmp_path, "node1")
    store.transition(Health.FENCED, 1.0, fence_class="replace", reason="pitstop: Action:Replace x")
    assert store.check_transition(Health.OK)
    assert store.on_boot("b1", 2.0) and store.on_boot("b2", 3.0)  # a reboot does not free it
    assert store.health == Health.FENCED
    store.transition(Health.OK, 4.0, by_operator=True)
    assert store.health == Health.OK


def test_fences_only_get_worse(tmp_path):
    store = HealthStore(tmp_path, "node1")
    store.apply(decision("xid", "48"), 1.0)
    assert store.state.fence_class == "drain"
    store.apply(decision("xid", "79"), 2.0)
    assert store.state.fence_class == "reboot"
    assert not store.apply(decision("xid", "48", now=3.0), 3.0)
    assert store.state.fence_class == "reboot"
    store.apply(decision("row_remap_failure"), 4.0)
    assert store.state.fence_class == "replace"


def test_down_sits_between_drain_and_reboot(tmp_path):
    store = HealthStore(tmp_path, "node1")
    store.apply(decision("xid", "48"), 1.0)
    assert store.apply(decision("slurmd_down", now=2.0), 2.0)
    assert (store.health, store.state.fence_class) == (Health.FENCED, "down")
    assert not store.apply(decision("xid", "74", now=3.0), 3.0)  # drain is not worse
    assert store.state.fence_class == "down"
    assert store.apply(decision("xid", "79", now=4.0), 4.0)
    assert store.state.fence_class == "reboot"
    assert not store.apply(decision("slurmd_down", now=5.0), 5.0)
    assert store.state.fence_class == "reboot"
    store.transition(Health.OK, 6.0, by_operator=True)  # the operator's resume ends any fence
    assert store.health == Health.OK


def test_dry_run_records_what_it_would_do_and_keeps_the_health(tmp_path):
    store = HealthStore(tmp_path, "node1")
    assert not store.apply(decision("xid", "79"), 1.0, dry_run=True)
    assert store.health == Health.OK
    (action,) = store.state.actions
    assert (action["action"], action["dry_run"]) == ("reboot", True)
    assert store.state.counters["actions.reboot.dry_run"] == 1


def test_suspect_returns_to_ok_when_its_findings_expire(tmp_path):
    store = HealthStore(tmp_path, "node1")
    store.apply(decision("xid", "38"), 0.0)
    assert store.expire_findings(100.0, max_age_s=600) == 0 and store.health == Health.SUSPECT
    assert store.expire_findings(700.0, max_age_s=600) == 1 and store.health == Health.OK


def test_open_findings_merge_by_key_and_stay_capped(tmp_path):
    store = HealthStore(tmp_path, "node1", max_findings=10, max_actions=5)
    for n in range(3):
        store.note_finding(Finding(node="node1", signal="xid", code="38", device="gpu0"), "watch", n)
    assert len(store.state.open_findings) == 1 and store.state.open_findings[0]["count"] == 3
    for n in range(50):
        store.note_finding(Finding(node="node1", signal="xid", code=str(n)), "watch", float(n))
        store.record_action(float(n), "app", reason="pitstop: x", job_id=str(n))
    assert len(store.state.open_findings) == 10 and len(store.state.actions) == 5
    assert store.state.open_findings[-1]["code"] == "49" and store.state.actions[-1]["job_id"] == "49"


def test_the_event_log_rotates_with_one_backup(tmp_path):
    store = HealthStore(tmp_path, "node1", events_max_bytes=2000)
    for n in range(200):
        store.log_event("finding", float(n), code=str(n))
    events = tmp_path / "node1.events.jsonl"
    backup = tmp_path / "node1.events.jsonl.1"
    assert events.stat().st_size <= 2000 and backup.stat().st_size <= 2000
    assert not (tmp_path / "node1.events.jsonl.2").exists()
    last = json.loads(events.read_text().splitlines()[-1])
    assert (last["kind"], last["code"], last["node"]) == ("finding", "199", "node1")


@pytest.mark.parametrize("content", [
    b"{not json", b"\xff\xfe\x00", b"[]", b'{"version": 1, "node": "node1"}',
    b'{"version": 9}', json.dumps({**NodeState("node1").to_dict(), "health": "ON_FIRE"}).encode(),
    json.dumps({**NodeState("node1").to_dict(), "node": "node2"}).encode(),
    json.dumps({**NodeState("node1").to_dict(), "open_findings": [1]}).encode(),
])
def test_a_corrupt_state_file_is_kept_aside_and_the_node_starts_clean(tmp_path, caplog, content):
    (tmp_path / "node1.json").write_bytes(content)
    with caplog.at_level(logging.WARNING):
        store = HealthStore.open(tmp_path, "node1")
    assert store.health == Health.OK and store.state.open_findings == []
    assert (tmp_path / "node1.json.corrupt").read_bytes() == content
    assert not (tmp_path / "node1.json").exists()
    assert "moved to" in caplog.text
    store.save()
    assert HealthStore.open(tmp_path, "node1").state.counters["state_file_corrupt"] == 1


def test_the_policy_history_rides_in_the_state_file(tmp_path):
    store = HealthStore(tmp_path, "node1")
    history = History(boot_id="b1")
    d = decision("xid", "79", history=history)
    history.record(d, 100.0)
    store.state.history = history.to_dict()
    store.save()
    loaded = History.from_dict(HealthStore.open(tmp_path, "node1").state.history)
    assert POLICY.decide(d.finding, 200.0, loaded).duplicate


@pytest.mark.parametrize("klass", ["drain", "down", "reboot", "replace"])
def test_a_fence_that_was_not_applied_falls_back_to_suspect(tmp_path, klass):
    store = HealthStore(tmp_path, "node1")
    store.transition(Health.FENCED, 1.0, fence_class=klass, reason="pitstop: x")
    store.transition(Health.SUSPECT, 2.0, reason="pitstop: x (breaker open)")
    assert (store.health, store.state.fence_class) == (Health.SUSPECT, None)


def test_telemetry_is_kept_and_optional(tmp_path):
    store = HealthStore(tmp_path, "node1")
    store.state.telemetry = {"heartbeat_at": 5.0, "port": 9100}
    store.save()
    assert HealthStore.open(tmp_path, "node1").state.telemetry == {"heartbeat_at": 5.0, "port": 9100}
    data = json.loads((tmp_path / "node1.json").read_text())
    del data["telemetry"]  # a file written before telemetry existed
    (tmp_path / "node1.json").write_text(json.dumps(data))
    assert HealthStore.open(tmp_path, "node1").state.telemetry == {}
