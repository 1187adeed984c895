"""The policy: the shipped table, the pure decision engine, and line-numbered errors."""

from __future__ import annotations

import json
import textwrap

import pytest

from pitstop.daemon.policy import (DEFAULT_POLICY, FENCE_CLASSES, REASON_MAX, History, Policy,
                                   breaker_open, reason_text)
from pitstop.yamlfile import DataFileError
from pitstop.model import Finding

POLICY = Policy.load()


def finding(signal, code="", device="gpu0", message="", job_id="", evidence="", node="node1"):
    return Finding(node=node, signal=signal, code=code, device=device, message=message,
                   evidence=evidence, job_id=job_id, time=0.0)


def decide(f, now=1000.0, history=None):
    return POLICY.decide(f, now, history if history is not None else History(boot_id="b1"))


def feed(history, f, now):
    decision = POLICY.decide(f, now, history)
    history.record(decision, now)
    return decision


# Every XID row of xid-reference.md and the class its first occurrence gets.
XID_TABLE = {
    "8": "app", "13": "app", "31": "app", "32": "app", "38": "watch", "43": "app", "45": "app",
    "46": "drain", "48": "drain", "54": "replace", "62": "drain", "63": "watch", "64": "drain",
    "68": "app", "69": "app", "74": "drain", "79": "reboot", "92": "watch", "94": "app",
    "95": "drain", "109": "drain", "110": "drain", "119": "drain", "120": "drain",
    "121": "watch", "136": "drain", "137": "app", "140": "drain", "143": "drain",
    "144": "watch", "147": "watch", "150": "watch", "151": "reboot", "155": "drain",
    "156": "drain", "157": "watch", "158": "drain", "168": "reboot", "171": "drain",
    "172": "drain", "999": "watch", "1": "watch",
}


@pytest.mark.parametrize("code,klass", sorted(XID_TABLE.items()))
def test_every_xid_row(code, klass):
    assert decide(finding("xid", code)).action_class == klass


@pytest.mark.parametrize("code", ["13", "31", "43", "45"])
def test_app_xids_never_fence(code):
    d = decide(finding("xid", code))
    assert d.action_class == "app" and not d.fences


@pytest.mark.parametrize("text,klass", [
    ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", "reboot"),
    ("GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)", "drain"),
    ("GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)", "drain"),
    ("GPU recovery action changed from 0x0 (None) to 0x3 (Drain P2P)", "drain"),
    ("GPU recovery action changed from 0x2 (Node Reboot Required) to 0x0 (None)", "watch"),
])
def test_xid_154_is_decided_by_its_text(text, klass):
    assert decide(finding("xid", "154", message=text)).action_class == klass


@pytest.mark.parametrize("signal,code,evidence,klass", [
    ("ecc_dbe_volatile", "", "count=2", "drain"),
    ("ecc_dbe_volatile", "", "count=0", "ignore"),
    ("ecc_dbe_volatile", "", "", "drain"),
    ("row_remap_failure", "", "", "replace"),
    ("row_remap_pending", "", "", "reboot"),
    ("retired_pages_pending", "", "", "reboot"),
    ("retired_pages_sbe", "", "count=61", "watch"),
    ("retired_pages_sbe", "", "value=60", "ignore"),
    ("throttle", "0x20", "", "watch"),
    ("accelerator_count_low", "7/8", "", "drain"),
    ("pcie_link_degraded", "", "", "drain"),
    ("recovery_action", "1", "", "drain"),
    ("recovery_action", "2", "", "reboot"),
    ("recovery_action", "3", "", "watch"),
    ("recovery_action", "4", "", "drain"),
    ("gpu_fallen_off_bus", "", "", "reboot"),
    ("sxid", "12028", "", "watch"),
    ("neuron_hw_error", "SRAM_UNCORRECTABLE_ERROR", "", "drain"),
    ("neuron_ecc", "mem_uncorrected", "", "drain"),
    ("neuron_ecc", "sram_corrected", "", "watch"),
    ("mlx5_fatal", "", "", "drain"),
    ("fs_error", "ext4", "", "drain"),
    ("io_error", "nvme0n1", "", "watch"),
    ("hung_task", "python", "", "watch"),
    ("kmsg_gap", "", "", "watch"),
    ("disk_low", "", "", "watch"),
    ("step_stall", "", "", "app"),
    ("slurmd_down", "", "", "down"),
    ("collective_timeout", "nccl_watchdog", "", "app"),
    ("a_signal_nobody_named", "", "", "watch"),
])
def test_the_counters_and_other_signals(signal, code, evidence, klass):
    assert decide(finding(signal, code, evidence=evidence)).action_class == klass


def test_message_rules_for_sxid_and_neuron():
    assert decide(finding("sxid", "20034", message="Fatal, Link 14 LTSSM Fault Up")).action_class == "drain"
    msg = "SRAM_UNCORRECTABLE_ERROR nd-id=0 action=TERMINATE_INSTANCE"
    assert decide(finding("neuron_hw_error", "SRAM_UNCORRECTABLE_ERROR", message=msg)).action_class == "replace"


def test_the_reason_for_slurm():
    d = decide(finding("xid", "79", device="gpu2", message="GPU has fallen off the bus."))
    assert d.reason == "pitstop: xid 79 gpu2 GPU has fallen off the bus"
    long = decide(finding("xid", "48", message="An uncorrectable double bit error " * 20 + "\nx"))
    assert long.reason.startswith("pitstop: xid 48 gpu0 An uncorrectable")
    assert len(long.reason) <= REASON_MAX and "\n" not in long.reason
    replace = decide(finding("row_remap_failure"))
    assert replace.reason.startswith("pitstop: Action:Replace row_remap_failure gpu0")


def test_reason_text_is_always_short_and_one_line():
    f = finding("x" * 300, "y" * 300, device="z" * 300, message="m\n" * 300)
    text = reason_text(f, "drain")
    assert text.startswith("pitstop:") and len(text) <= REASON_MAX and "\n" not in text


def test_decide_is_pure():
    history = History(boot_id="b1")
    feed(history, finding("xid", "38"), 10.0)
    before = json.dumps(history.to_dict(), sort_keys=True)
    first = POLICY.decide(finding("xid", "38"), 20.0, history)
    second = POLICY.decide(finding("xid", "38"), 20.0, history)
    assert first == second
    assert json.dumps(history.to_dict(), sort_keys=True) == before


def test_a_fence_acts_once_per_boot_per_key():
    history = History(boot_id="b1")
    assert feed(history, finding("xid", "48"), 10.0).fences
    again = feed(history, finding("xid", "48"), 20.0)
    assert again.action_class == "drain" and again.duplicate and not again.fences
    other_gpu = feed(history, finding("xid", "48", device="gpu1"), 30.0)
    assert other_gpu.duplicate and "already fenced" in other_gpu.detail  # drained already
    history.start_boot("b2")
    assert feed(history, finding("xid", "48"), 40.0).fences


def test_the_same_cause_fenced_again_is_replace_not_another_reboot():
    history = History(boot_id="b1")
    first = feed(history, finding("xid", "79"), 100.0)
    assert first.action_class == "reboot"
    history.start_boot("b2")
    second = feed(history, finding("xid", "79"), 1000.0)
    assert (second.action_class, second.escalated_from) == ("replace", "reboot")
    assert second.reason.startswith("pitstop: Action:Replace xid 79 gpu0")
    assert "2x in 7d" in second.reason


def test_refence_counts_only_inside_its_window():
    history = History(boot_id="b1")
    feed(history, finding("xid", "79"), 0.0)
    history.start_boot("b2")
    assert feed(history, finding("xid", "79"), 8 * 86400.0).action_class == "reboot"


def test_watch_escalates_at_count_inside_the_window():
    history = History(boot_id="b1")
    hung = finding("hung_task", "python", device="")
    assert feed(history, hung, 0.0).action_class == "watch"
    assert feed(history, hung, 100.0).action_class == "watch"
    third = feed(history, hung, 200.0)
    assert (third.action_class, third.escalated_from, third.count) == ("drain", "watch", 3)
    fresh = History(boot_id="b1")
    for t in (0.0, 700.0, 1400.0):  # never three inside 600 s
        assert feed(fresh, hung, t).action_class == "watch"


def test_watch_without_escalation_only_reports():
    history = History(boot_id="b1")
    for t in range(10):
        assert feed(history, finding("kmsg_gap", device=""), float(t)).action_class == "watch"


def test_app_xid_escalates_on_repeats_on_one_gpu():
    history = History(boot_id="b1")
    classes = [feed(history, finding("xid", "13"), t).action_class for t in (0.0, 10.0, 20.0)]
    assert classes == ["app", "app", "drain"]


def test_a_collective_timeout_alone_requeues_and_never_fences():
    history = History(boot_id="b1")
    d = feed(history, finding("collective_timeout", "nccl_watchdog", device="", job_id="42"), 100.0)
    assert (d.action_class, d.job_id, d.requeues, d.fences) == ("app", "42", True, False)
    again = feed(history, finding("collective_timeout", "nccl_watchdog", device="", job_id="42"), 150.0)
    assert again.duplicate and not again.requeues
    later = feed(history, finding("collective_timeout", "nccl_watchdog", device="", job_id="42"), 1000.0)
    assert later.requeues  # the requeued run hung again


def test_a_stall_in_the_next_run_of_a_requeued_job_is_requeued_again_however_soon():
    history = History(boot_id="b1")
    first = feed(history, finding("step_stall", device="", job_id="7"), 100.0)
    assert first.requeues
    assert feed(history, finding("step_stall", device="", job_id="7"), 110.0).duplicate  # the same run
    history.job_started("7")  # the requeued job runs here again
    again = feed(history, finding("step_stall", device="", job_id="7"), 140.0)
    assert again.requeues and not again.duplicate
    history.job_started("8")  # another job's start forgets nothing of job 7's run
    assert feed(history, finding("step_stall", device="", job_id="7"), 150.0).duplicate


def test_an_older_attempts_late_finding_does_not_hide_the_same_symptom_in_the_new_one():
    """Seen in the goodput campaign: attempt 3 started, then a stall finding of attempt 2
    arrived (stale, not acted on); attempt 3's own stall seconds later must still act."""
    from dataclasses import replace

    history = History(boot_id="b1")
    stall = finding("step_stall", device="", job_id="7")
    assert feed(history, replace(stall, attempt=2), 100.0).requeues
    history.job_started("7")  # attempt 3's line
    assert feed(history, replace(stall, attempt=2), 104.0).requeues  # late, stale: the agent drops it
    assert feed(history, replace(stall, attempt=3), 160.0).requeues  # not a duplicate of that one
    assert feed(history, replace(stall, attempt=3), 170.0).duplicate  # the same attempt, again


def test_a_collective_timeout_after_a_hardware_finding_fences_this_node():
    history = History(boot_id="b1")
    assert feed(history, finding("xid", "38", device="gpu1"), 100.0).action_class == "watch"
    timeout = finding("collective_timeout", "nccl_watchdog", device="", job_id="42")
    d = feed(history, timeout, 700.0)  # the NCCL timeout comes 10 minutes later
    assert (d.action_class, d.escalated_from, d.job_id) == ("drain", "app", "42")
    assert d.correlated_with.signal == "xid" and d.correlated_with.code == "38"
    assert d.reason.startswith("pitstop: xid 38 gpu1") and "nccl_watchdog job 42" in d.reason
    assert d.findings == (timeout, d.correlated_with)


def test_a_hardware_finding_just_after_a_collective_timeout_fences():
    history = History(boot_id="b1")
    feed(history, finding("collective_timeout", "nccl_watchdog", device="", job_id="42"), 100.0)
    d = feed(history, finding("io_error", "nvme0n1", device="nvme0n1"), 150.0)
    assert d.action_class == "drain" and d.correlated_with.job_id == "42"


def test_hardware_outside_the_window_does_not_correlate():
    history = History(boot_id="b1")
    feed(history, finding("xid", "38", device="gpu1"), 0.0)
    d = feed(history, finding("collective_timeout", "nccl_watchdog", device="", job_id="42"), 2000.0)
    assert d.action_class == "app"
    other = History(boot_id="b1")
    feed(other, finding("collective_timeout", "nccl_watchdog", device="", job_id="42"), 0.0)
    assert feed(other, finding("xid", "38", device="gpu1"), 500.0).action_class == "watch"


def test_app_xids_are_not_hardware_evidence():
    history = History(boot_id="b1")
    feed(history, finding("xid", "45"), 100.0)  # cleanup after the kill: sympathetic
    d = feed(history, finding("collective_timeout", "nccl_watchdog", device="", job_id="42"), 110.0)
    assert d.action_class == "app"


def test_a_node_already_fenced_for_the_hardware_is_not_fenced_again_by_the_timeout():
    history = History(boot_id="b1")
    assert feed(history, finding("xid", "79"), 100.0).fences
    d = feed(history, finding("collective_timeout", "nccl_watchdog", device="", job_id="42"), 200.0)
    assert d.action_class == "app" and "already fenced" in d.detail


@pytest.mark.parametrize("fenced,total,share,opened", [
    (0, 10, 0.2, False), (2, 10, 0.2, False), (3, 10, 0.2, True), (1, 3, 0.5, False),
    (2, 3, 0.5, True), (0, 0, 0.5, True), (5, 5, 1.0, False)])
def test_breaker(fenced, total, share, opened):
    assert breaker_open(fenced, total, share) is opened


def test_history_survives_json_and_drops_junk():
    history = History(boot_id="b1")
    for t, f in enumerate([finding("xid", "38"), finding("xid", "79"),
                           finding("collective_timeout", "nccl_watchdog", job_id="1")]):
        feed(history, f, float(t))
    restored = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert restored.to_dict() == history.to_dict()
    junk = History.from_dict({"seen": {"a": ["x", 1]}, "fences": [1, {"time": "x"}, {"time": 3}],
                              "fenced_keys": {"k": "v"}, "hardware": "nope"})
    assert junk.seen == {"a": [1.0]} and junk.fences == [{"time": 3}] and junk.fenced_keys == {}
    assert History.from_dict(None) == History()


def test_history_stays_bounded():
    history = History(boot_id="b1")
    for t in range(2000):
        feed(history, finding("xid", "38", device=f"gpu{t}"), float(t))
        feed(history, finding("kmsg_gap", device=""), float(t))
    assert len(history.seen) <= 512 and len(history.hardware) <= 128
    assert all(len(times) <= 64 for times in history.seen.values())


def test_decision_to_dict_is_json():
    d = decide(finding("xid", "79", message="GPU has fallen off the bus."))
    data = json.loads(json.dumps(d.to_dict()))
    assert data["action_class"] == "reboot" and data["finding"]["code"] == "79"


# ------------------------------------------------------------------ loading and merging

def write(tmp_path, text, name="override.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_an_override_changes_only_what_it_names(tmp_path):
    path = write(tmp_path, """\
        settings:
          correlation:
            before_s: 60
        rules:
          xid:
            codes:
              "13": drain
          disk_low: drain
        """)
    merged = Policy.load(path)
    assert merged.decide(finding("xid", "13"), 0.0, History()).action_class == "drain"
    assert merged.decide(finding("xid", "79"), 0.0, History()).action_class == "reboot"
    assert merged.decide(finding("xid", "145"), 0.0, History()).action_class == "watch"
    assert merged.decide(finding("disk_low"), 0.0, History()).action_class == "drain"
    assert merged.settings.correlation.before_s == 60
    assert merged.settings.correlation.after_s == 120
    assert merged.files == [str(DEFAULT_POLICY), str(path)]


def test_an_override_can_split_a_range(tmp_path):
    path = write(tmp_path, 'rules:\n  xid:\n    codes:\n      "145": drain\n')
    merged = Policy.load(path)
    assert merged.decide(finding("xid", "145"), 0.0, History()).action_class == "drain"
    assert merged.decide(finding("xid", "146"), 0.0, History()).action_class == "watch"


def test_an_empty_override_is_the_default(tmp_path):
    assert Policy.load(write(tmp_path, "")).to_yaml() == POLICY.to_yaml()


@pytest.mark.parametrize("text,line,key", [
    ('rules:\n  xid:\n    codes:\n      "13": dran\n', 4, "rules.xid.codes.13"),
    ("rules:\n  disk_low: {class: watch, cuont: 3}\n", 2, "rules.disk_low.cuont"),
    ("rules:\n  disk_low:\n    class: drain\n    count: 3\n", 4, "rules.disk_low.count"),
    ("settings:\n  breaker_max_share: 2\n", 2, "settings.breaker_max_share"),
    ("settings:\n  correlation:\n    fence: watch\n", 3, "settings.correlation.fence"),
    ("settings:\n  colour: red\n", 2, "settings.colour"),
    ("rules:\n  sxid:\n    class: watch\n    when:\n      - {match: '(', class: drain}\n", 5,
     "rules.sxid.when[0].match"),
    ('rules:\n  xid:\n    codes:\n      "13": app\n      "10-14": drain\n', 5, "rules.xid.codes.10-14"),
    ('rules:\n  xid:\n    codes:\n      "20-10": app\n', 4, "rules.xid.codes.20-10"),
    ("version: 2\n", 1, "version"),
    ("rulez: {}\n", 1, "rulez"),
    ("rules:\n  io_error: watch\n  io_error: drain\n", 3, "io_error"),
    ("rules:\n  step_stall: [app\n", 3, ""),
    ("rules:\n  xid:\n    codes:\n      \"79\": {class: reboot, refence: {count: 0, window_s: 1, escalate: replace}}\n",
     4, "rules.xid.codes.79.refence.count"),
])
def test_malformed_policies_name_the_file_line_and_key(tmp_path, text, line, key):
    path = write(tmp_path, text)
    with pytest.raises(DataFileError) as err:
        Policy.load(path)
    assert (err.value.file, err.value.line, err.value.key) == (str(path), line, key)
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataFileError) as err:
        Policy.load(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value) and "cannot read" in str(err.value)


def test_the_shipped_policy_names_every_signal_of_the_contract():
    contract = {"xid", "sxid", "gpu_fallen_off_bus", "neuron_hw_error", "mlx5_fatal", "hung_task",
                "io_error", "fs_error", "kmsg_gap", "ecc_dbe_volatile", "ecc_sbe_volatile",
                "ecc_dbe_aggregate", "retired_pages_pending", "retired_pages_sbe",
                "row_remap_pending", "row_remap_failure", "throttle", "pcie_link_degraded",
                "nvlink_down", "temperature_high", "recovery_action", "accelerator_count_low",
                "neuron_ecc", "disk_low", "memory_low", "collective_timeout", "ib_error",
                "step_stall", "slurmd_down"}
    assert contract <= set(POLICY.signals)
    for rules in POLICY.signals.values():
        for rule in [rules.rule, rules.default, *rules.exact.values(), *(s[2] for s in rules.spans)]:
            if rule is not None and rule.escalation and rule.escalation.to:
                assert rule.escalation.to in FENCE_CLASSES


def test_a_node_fenced_this_boot_is_not_fenced_again_for_a_lesser_cause():
    history = History(boot_id="b1")
    assert feed(history, finding("xid", "48"), 10.0).fences
    lesser = feed(history, finding("xid", "74"), 20.0)
    assert lesser.action_class == "drain" and lesser.duplicate and "already fenced (drain)" in lesser.detail
    worse = feed(history, finding("xid", "79"), 30.0)
    assert worse.action_class == "reboot" and worse.fences


def test_down_ranks_between_drain_and_reboot():
    history = History(boot_id="b1")
    assert feed(history, finding("xid", "48"), 10.0).fences  # drained
    down = feed(history, finding("slurmd_down", device=""), 20.0)
    assert down.action_class == "down" and down.fences  # worse than a drain
    lesser = feed(history, finding("xid", "74"), 30.0)
    assert lesser.duplicate and "already fenced (down)" in lesser.detail
    assert feed(history, finding("xid", "79"), 40.0).fences  # reboot is worse than down
    assert feed(history, finding("slurmd_down", device="", code="x"), 50.0).duplicate


def test_down_is_a_class_an_override_may_name(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("version: 1\nsettings:\n  correlation: {fence: down}\nrules:\n  fs_error: down\n")
    merged = Policy.load(override)
    assert merged.decide(finding("fs_error", "ext4"), 0.0, History()).action_class == "down"
    assert merged.settings.correlation.fence == "down"


def test_back_in_service_lets_a_recurrence_fence_again():
    history = History(boot_id="b1")
    assert feed(history, finding("xid", "48"), 10.0).fences
    history.back_in_service(100.0)
    again = feed(history, finding("xid", "48"), 200.0)
    assert again.fences and again.action_class == "drain"


def test_a_fence_that_was_not_carried_out_is_forgotten():
    history = History(boot_id="b1")
    first = feed(history, finding("xid", "79"), 10.0)
    history.forget_fence(first)  # the breaker was open
    assert history.current_fence() == "" and history.fences == []
    history.start_boot("b2")
    assert feed(history, finding("xid", "79"), 20.0).action_class == "reboot"  # not replace


def test_a_timeout_on_a_node_already_fenced_still_requeues_its_job():
    history = History(boot_id="b1")
    feed(history, finding("xid", "48"), 10.0)
    feed(history, finding("xid", "38", device="gpu3"), 20.0)
    d = feed(history, finding("collective_timeout", "nccl_watchdog", device="", job_id="7"), 30.0)
    assert d.action_class == "app" and d.requeues and "node already fenced (drain)" in d.detail


def test_a_step_stall_with_hardware_of_this_node_fences_it():
    history = History(boot_id="b1")
    feed(history, finding("xid", "121", device="gpu4"), 100.0)  # C2C error: watch
    d = feed(history, finding("step_stall", device="", job_id="9"), 400.0)
    assert d.action_class == "drain" and d.correlated_with.code == "121"
    alone = feed(History(boot_id="b1"), finding("step_stall", device="", job_id="9"), 400.0)
    assert alone.action_class == "app" and alone.requeues


def test_only_safe_yaml_is_accepted(tmp_path):
    path = write(tmp_path, "rules:\n  xid: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(DataFileError) as err:
        Policy.load(path)
    assert err.value.line == 2 and "python/object" in str(err.value)
