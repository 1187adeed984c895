"""The NVML source: decisions on recorded readings, the replay, and the live sampler on a
machine without an NVIDIA driver (this one)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

import pitstop.daemon
from pitstop.daemon import nvml
from pitstop.daemon.nvml import (Fault, GpuReading, NvmlReplay, NvmlSampler, NvmlState,
                                 NvmlThresholds, XidEvent, findings_from_readings,
                                 load_recording, xid_finding)

DATA = Path(pitstop.daemon.__file__).parent / "data"
HEALTHY = DATA / "nvml-recorded-8xh100.jsonl"
EIGHT = NvmlThresholds(expected_gpus=8)


def decide(polls, thresholds=EIGHT, state=None):
    """The findings of each poll in turn, the state carried from one to the next."""
    state = state or NvmlState()
    per_poll = []
    for number, readings in enumerate(polls):
        findings, state = findings_from_readings("gpu-node-1", readings, state, thresholds,
                                                 now=1_800_000_000.0 + number)
        per_poll.append(findings)
    return per_poll


def keys(findings):
    return sorted((f.signal, f.code, f.device) for f in findings)


def by_poll(per_poll):
    return {n: keys(f) for n, f in enumerate(per_poll) if f}


def healthy_gpu(index=0, **values) -> GpuReading:
    base = NvmlReplay(HEALTHY).recorded[0][0]
    return dataclasses.replace(base, index=index, **values)


# ---------------------------------------------------------------- recordings

def test_healthy_recording_is_eight_h100s_with_every_field_and_gives_no_findings():
    recording = load_recording(HEALTHY)
    assert recording.skipped == []
    assert len(recording.polls) >= 20
    field_names = {f.name for f in dataclasses.fields(GpuReading)}
    for line in HEALTHY.read_text().splitlines():
        poll = json.loads(line)
        assert isinstance(poll["time"], float)
        assert [set(gpu) for gpu in poll["gpus"]] == [field_names] * 8
    first = recording.polls[0]
    assert [r.index for r in first] == list(range(8))
    assert len({r.uuid for r in first}) == 8 and all(r.uuid.startswith("GPU-") for r in first)
    assert {r.name for r in first} == {"NVIDIA H100 80GB HBM3"}
    assert all(r.pcie_gen == r.pcie_gen_max == 5 and r.pcie_width == 16 for r in first)
    assert decide(recording.polls) == [[]] * len(recording.polls)


def test_double_bit_error_and_pending_remap_are_found_once_and_again_when_the_count_grows():
    per_poll = decide(NvmlReplay(DATA / "nvml-recorded-8xh100-dbe.jsonl").polls())
    assert by_poll(per_poll) == {
        6: [("ecc_dbe_aggregate", "", "gpu3"), ("ecc_dbe_volatile", "", "gpu3"),
            ("recovery_action", "1", "gpu3"), ("row_remap_pending", "", "gpu3")],
        9: [("ecc_dbe_aggregate", "", "gpu3"), ("ecc_dbe_volatile", "", "gpu3")],
    }
    dbe = next(f for f in per_poll[6] if f.signal == "ecc_dbe_volatile")
    assert dbe.node == "gpu-node-1" and dbe.source == "nvml" and dbe.time == 1_800_000_006.0
    assert "ecc_dbe_volatile=1" in dbe.evidence and "00000000:5D:00.0" in dbe.evidence
    assert "GPU reset" in next(f.message for f in per_poll[6] if f.signal == "recovery_action")


def test_throttle_needs_sustained_polls_and_temperature_is_reported_once_while_hot():
    per_poll = decide(NvmlReplay(DATA / "nvml-recorded-8xh100-thermal.jsonl").polls())
    # poll 2 has one sample of SW thermal slowdown: never a finding on one sample.
    # polls 5-10 hold HW thermal slowdown + SW power cap (0x44); only 0x40 is a fault bit.
    assert by_poll(per_poll) == {
        5: [("temperature_high", "", "gpu5")],
        7: [("throttle", "0x40", "gpu5")],
    }
    assert "hw_thermal_slowdown" in per_poll[7][0].message


def test_throttle_streak_counts_per_gpu_and_resets_when_the_reason_clears():
    hot, cool = 0x40, 0x4
    masks = [hot, hot, cool, hot, hot, hot, hot]
    per_poll = decide([[healthy_gpu(0, throttle_reasons=m)] for m in masks],
                      NvmlThresholds(throttle_sustained_polls=3))
    assert by_poll(per_poll) == {5: [("throttle", "0x40", "gpu0")]}


def test_link_width_nvlink_and_a_lost_gpu():
    per_poll = decide(NvmlReplay(DATA / "nvml-recorded-8xh100-links.jsonl").polls())
    assert by_poll(per_poll) == {
        4: [("nvlink_down", "7", "gpu2"), ("pcie_link_degraded", "", "gpu6")],
        8: [("accelerator_count_low", "7/8", "")],
    }
    assert "x8" in next(f.message for f in per_poll[4] if f.signal == "pcie_link_degraded")


def test_pcie_gen_below_max_counts_only_under_load():
    idle = healthy_gpu(0, pcie_gen=1, util_gpu_pct=0)
    loaded = healthy_gpu(0, pcie_gen=3, util_gpu_pct=97)
    assert decide([[idle]], NvmlThresholds()) == [[]]
    assert keys(decide([[loaded]], NvmlThresholds())[0]) == [("pcie_link_degraded", "", "gpu0")]


@pytest.mark.parametrize("values, expected", [
    ({"retired_pages_sbe": 60}, []),
    ({"retired_pages_sbe": 61}, [("retired_pages_sbe", "", "gpu0")]),
    ({"retired_pages_pending": True}, [("retired_pages_pending", "", "gpu0")]),
    ({"row_remap_failure": True}, [("row_remap_failure", "", "gpu0")]),
    ({"ecc_sbe_volatile": 4}, [("ecc_sbe_volatile", "", "gpu0")]),
    ({"recovery_action": 2}, [("recovery_action", "2", "gpu0")]),
    ({"recovery_action": 0}, []),
    ({"temperature_c": 84}, []),
    ({"temperature_c": 85}, [("temperature_high", "", "gpu0")]),
])
def test_counter_rules(values, expected):
    assert keys(decide([[healthy_gpu(0, **values)]], NvmlThresholds())[0]) == expected


def test_a_condition_that_clears_and_returns_is_reported_again():
    pending, clear = healthy_gpu(0, row_remap_pending=True), healthy_gpu(0)
    per_poll = decide([[pending], [pending], [clear], [pending]], NvmlThresholds())
    assert [len(f) for f in per_poll] == [1, 0, 0, 1]


def test_temperature_stays_high_until_below_the_hysteresis():
    temps = [86, 83, 81, 79, 86]
    per_poll = decide([[healthy_gpu(0, temperature_c=t)] for t in temps], NvmlThresholds())
    assert [len(f) for f in per_poll] == [1, 0, 0, 0, 1]


def test_fields_the_gpu_does_not_report_give_no_findings():
    assert decide([[GpuReading(index=i) for i in range(8)]]) == [[]]


def test_no_gpus_on_a_node_that_expects_eight():
    assert keys(decide([[]])[0]) == [("accelerator_count_low", "0/8", "")]
    assert decide([[]], NvmlThresholds()) == [[]]


def test_decisions_are_pure():
    readings = [healthy_gpu(0, ecc_dbe_volatile=1)]
    state = NvmlState()
    first = findings_from_readings("n", readings, state, EIGHT, 1.0)
    second = findings_from_readings("n", readings, state, EIGHT, 1.0)
    assert first == second
    assert state == NvmlState()
    with pytest.raises(TypeError):
        first[1].reported[("x", "", "")] = 1  # type: ignore[index]


def test_thresholds_from_config():
    assert NvmlThresholds.from_dict({"throttle_mask": "0x28", "expected_gpus": 4}) == \
        NvmlThresholds(throttle_mask=0x28, expected_gpus=4)
    with pytest.raises(ValueError, match="unknown nvml threshold.*retired_pages"):
        NvmlThresholds.from_dict({"retired_pages": 3})


def test_xid_event_becomes_the_same_finding_as_the_kernel_line():
    finding = xid_finding("gpu-node-1", XidEvent(gpu_index=3, xid=79, time=5.0))
    assert finding.key == ("gpu-node-1", "xid", "79", "gpu3")
    assert finding.source == "nvml" and finding.time == 5.0


# ---------------------------------------------------------------- replay

def test_fault_injection_sets_values_from_a_poll_and_can_drop_a_gpu():
    replay = NvmlReplay(HEALTHY, faults=[
        Fault(gpu=1, values={"ecc_dbe_volatile": 3}, start=2, stop=4),
        Fault.from_dict({"gpu": 7, "drop": True, "start": 3}),
    ])
    polls = list(replay.polls())
    assert [polls[n][1].ecc_dbe_volatile for n in range(6)] == [0, 0, 3, 3, 0, 0]
    assert [len(p) for p in polls[:5]] == [8, 8, 8, 7, 7]


def test_a_fault_on_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match="not a reading field: ecc_dbe"):
        Fault(gpu=0, values={"ecc_dbe": 1})
    with pytest.raises(ValueError, match="index"):
        Fault(gpu=0, values={"index": 4})


def test_replay_loops_or_holds_the_last_poll(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_text("".join(nvml.poll_line(t, [healthy_gpu(0, temperature_c=t)]) + "\n"
                            for t in (40, 41)))
    looping = NvmlReplay(path)
    assert [looping.poll()[0].temperature_c for _ in range(5)] == [40, 41, 40, 41, 40]
    holding = NvmlReplay(path, loop=False)
    assert [holding.poll()[0].temperature_c for _ in range(4)] == [40, 41, 41, 41]
    assert looping.enabled and looping.xid_waiter() is None


def test_lines_that_are_not_a_poll_are_counted_and_named(tmp_path, caplog):
    good = nvml.poll_line(1.0, [healthy_gpu(0)])
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([good, "{not json", '{"time": 2}', '{"gpus": [{"uuid": "x"}]}',
                               "", good.replace('"index":0', '"index":0,"from_a_newer_driver":1')])
                    + "\n")
    with caplog.at_level(logging.WARNING, logger="pitstop.daemon.nvml"):
        recording = load_recording(path)
    assert recording.skipped == [2, 3, 4]
    assert len(recording.polls) == 2
    assert "skipped 3 line(s)" in caplog.text


def test_an_empty_recording_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("garbage\n")
    with pytest.raises(ValueError, match="no polls"):
        NvmlReplay(path)


# ---------------------------------------------------------------- live, without a driver

def test_live_sampler_disables_itself_with_one_log_line(caplog, tmp_path):
    sampler = NvmlSampler()
    with caplog.at_level(logging.DEBUG, logger="pitstop.daemon.nvml"):
        assert sampler.poll() == []
        assert sampler.poll() == []
        assert sampler.enabled is False
        assert sampler.xid_waiter() is None
    records = [r for r in caplog.records if r.name == "pitstop.daemon.nvml"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "disabled" in records[0].getMessage()
    assert "no NVIDIA driver" in records[0].getMessage()
    assert "no NVIDIA driver" in sampler.disabled_reason
    with pytest.raises(RuntimeError, match="cannot record"):
        sampler.record(tmp_path / "out.jsonl", polls=1)
    sampler.close()


def test_record_command_says_why_it_cannot_record_here(tmp_path, capsys):
    assert nvml.main(["--record", str(tmp_path / "out.jsonl"), "--polls", "1"]) == 2
    assert "no NVIDIA driver" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------- the pynvml calls, faked

class FakeDriver:
    """Answers pynvml's calls with pynvml's own structures, so `read_gpu`'s use of the
    API (names, units, structure fields) is checked here; the GPU machine checks the rest."""

    def __init__(self, unsupported=(), lost=()):
        self.unsupported = set(unsupported)
        self.lost = set(lost)

    def install(self, monkeypatch):
        import pynvml

        def answer(name, value):
            def call(handle, *args):
                if handle in self.lost:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
                if name in self.unsupported:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
                return value(handle, *args) if callable(value) else value
            monkeypatch.setattr(pynvml, name, call)

        util = pynvml.c_nvmlUtilization_t(gpu=97, memory=41)
        memory = pynvml.c_nvmlMemory_t(total=80 << 30, free=20 << 30, used=60 << 30)
        pci = pynvml.nvmlPciInfo_t(busId=b"00000000:3B:00.0")
        ecc = {(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): 5,
               (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): 1,
               (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): 9,
               (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC): 2}

        def field_values(handle, ids):
            values = (pynvml.c_nvmlFieldValue_t * len(ids))()
            values[0].fieldId = ids[0]
            values[0].nvmlReturn = pynvml.NVML_SUCCESS
            values[0].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            values[0].value.uiVal = 2
            return values

        def nvlink(handle, link):
            if link >= 18:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return pynvml.NVML_FEATURE_DISABLED if link == 4 else pynvml.NVML_FEATURE_ENABLED

        answer("nvmlDeviceGetUUID", "GPU-0000")
        answer("nvmlDeviceGetName", "NVIDIA H100 80GB HBM3")
        answer("nvmlDeviceGetPciInfo", pci)
        answer("nvmlDeviceGetTotalEccErrors", lambda h, kind, counter: ecc[kind, counter])
        answer("nvmlDeviceGetRetiredPages", lambda h, cause: [0x1000] * (3 if cause ==
               pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS else 1))
        answer("nvmlDeviceGetRetiredPagesPendingStatus", pynvml.NVML_FEATURE_ENABLED)
        answer("nvmlDeviceGetRemappedRows", (4, 1, 1, 0))
        answer("nvmlDeviceGetCurrentClocksEventReasons", 0x44)
        answer("nvmlDeviceGetTemperature", 71)
        answer("nvmlDeviceGetPowerUsage", 612345)
        answer("nvmlDeviceGetUtilizationRates", util)
        answer("nvmlDeviceGetMemoryInfo", memory)
        answer("nvmlDeviceGetCurrPcieLinkGeneration", 5)
        answer("nvmlDeviceGetMaxPcieLinkGeneration", 5)
        answer("nvmlDeviceGetCurrPcieLinkWidth", 8)
        answer("nvmlDeviceGetMaxPcieLinkWidth", 16)
        answer("nvmlDeviceGetNvLinkState", nvlink)
        answer("nvmlDeviceGetFieldValues", field_values)
        monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlSystemGetDriverVersion", lambda: "570.86.15")
        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 2)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: f"handle{i}")


def test_read_gpu_maps_nvml_answers_to_a_reading(monkeypatch):
    FakeDriver().install(monkeypatch)
    reading = nvml.read_gpu(0, "handle0")
    assert reading == GpuReading(
        index=0, uuid="GPU-0000", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:3B:00.0",
        ecc_sbe_volatile=5, ecc_dbe_volatile=1, ecc_sbe_aggregate=9, ecc_dbe_aggregate=2,
        retired_pages_sbe=3, retired_pages_dbe=1, retired_pages_pending=True,
        row_remap_correctable=4, row_remap_uncorrectable=1, row_remap_pending=True,
        row_remap_failure=False, throttle_reasons=0x44, temperature_c=71, power_w=612.345,
        util_gpu_pct=97, util_mem_pct=41, memory_used_bytes=60 << 30,
        memory_total_bytes=80 << 30, pcie_gen=5, pcie_gen_max=5, pcie_width=8,
        pcie_width_max=16, nvlink_up=[True] * 4 + [False] + [True] * 13, recovery_action=2)


def test_unsupported_fields_read_as_none(monkeypatch):
    FakeDriver(unsupported={"nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPagesPendingStatus",
                            "nvmlDeviceGetFieldValues", "nvmlDeviceGetNvLinkState",
                            "nvmlDeviceGetRemappedRows"}).install(monkeypatch)
    reading = nvml.read_gpu(0, "handle0")
    assert (reading.retired_pages_sbe, reading.retired_pages_pending, reading.recovery_action,
            reading.nvlink_up, reading.row_remap_pending) == (None, None, None, None, None)
    assert reading.temperature_c == 71


def test_a_lost_gpu_is_left_out_of_the_poll_and_logged_once(monkeypatch, caplog):
    FakeDriver(lost={"handle1"}).install(monkeypatch)
    sampler = NvmlSampler()
    with caplog.at_level(logging.INFO, logger="pitstop.daemon.nvml"):
        assert [r.index for r in sampler.poll()] == [0]
        assert [r.index for r in sampler.poll()] == [0]
    lost_lines = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
    assert lost_lines == ["nvml: gpu1 does not answer: GPU is lost"]
    sampler.close()


def test_record_writes_polls_that_replay_reads_back(monkeypatch, tmp_path):
    FakeDriver().install(monkeypatch)
    out = tmp_path / "recorded.jsonl"
    assert nvml.main(["--record", str(out), "--polls", "3", "--interval", "0"]) == 0
    replay = NvmlReplay(out)
    assert len(replay.recorded) == 3 and [r.uuid for r in replay.recorded[0]] == ["GPU-0000"] * 2


def test_a_gpu_without_a_handle_at_start_is_left_out(monkeypatch, caplog):
    import pynvml

    FakeDriver().install(monkeypatch)

    def handle(index):
        if index == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return f"handle{index}"

    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", handle)
    sampler = NvmlSampler()
    with caplog.at_level(logging.INFO, logger="pitstop.daemon.nvml"):
        assert [r.index for r in sampler.poll()] == [0]
    assert "gpu1 does not answer at start" in caplog.text
    assert "watching 1 of 2 GPUs (driver 570.86.15)" in caplog.text
    sampler.close()


def test_xid_waiter_registers_each_gpu_and_returns_events(monkeypatch, caplog):
    import pynvml

    FakeDriver().install(monkeypatch)
    registered, events = [], []

    def register(handle, event_types, event_set):
        if handle == "handle1":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        registered.append((handle, event_types))

    def wait(event_set, timeout_ms):
        if not events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        return events.pop(0)

    data = pynvml.c_nvmlEventData_t()
    data.eventType, data.eventData = pynvml.nvmlEventTypeXidCriticalError, 79
    events.append(data)
    monkeypatch.setattr(pynvml, "nvmlEventSetCreate", lambda: "event-set")
    monkeypatch.setattr(pynvml, "nvmlDeviceRegisterEvents", register)
    monkeypatch.setattr(pynvml, "nvmlEventSetWait", wait)
    monkeypatch.setattr(pynvml, "nvmlEventSetFree", lambda event_set: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetIndex", lambda device: 0)
    sampler = NvmlSampler()
    with caplog.at_level(logging.INFO, logger="pitstop.daemon.nvml"):
        waiter = sampler.xid_waiter()
    assert registered == [("handle0", pynvml.nvmlEventTypeXidCriticalError)]
    assert waiter.watched == [0] and "GPUs [1] do not deliver XID events" in caplog.text
    event = waiter.wait(timeout_ms=10)
    assert (event.gpu_index, event.xid) == (0, 79)
    assert waiter.wait(timeout_ms=10) is None
    waiter.close()
    sampler.close()
