"""The Neuron source: neuron-monitor's documented JSON parsed into readings and findings,
and the live edge where the binary is absent (this machine)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

import pitstop.daemon
from pitstop.daemon.neuron import (NeuronMonitor, NeuronParser, NeuronState, NeuronThresholds,
                                   findings_from_report, parse_report, read_reports)

SAMPLE = Path(pitstop.daemon.__file__).parent / "data" / "neuron-monitor-sample.jsonl"


def sample_reports():
    return read_reports(SAMPLE.read_text().splitlines())


def decide(reports, thresholds=NeuronThresholds(expected_devices=16)):
    state, per_report = NeuronState(), []
    for number, report in enumerate(reports):
        findings, state = findings_from_report("trn-node-1", report, state, thresholds,
                                               now=100.0 + number)
        per_report.append(findings)
    return per_report


def test_sample_parses_into_devices_cores_and_memory():
    reports = sample_reports()
    assert len(reports) == 7
    first = reports[0]
    assert first.device_count == 16 and first.device_type == "trainium"
    assert [d.index for d in first.devices] == list(range(16))
    assert first.devices[2].mem_ecc_corrected == 3
    assert len(first.cores) == 32 and {c.runtime_tag for c in first.cores} == {"llama-8b-pretrain"}
    assert all(80 < c.utilization_pct <= 100 for c in first.cores)
    assert first.device_memory_used_bytes == 12519788544
    assert first.host_memory_used_bytes == 6997643264
    assert first.errors == []


def test_findings_over_the_sample():
    per_report = decide(sample_reports())
    found = {n: sorted((f.signal, f.code, f.device) for f in fs) for n, fs in enumerate(per_report) if fs}
    assert found == {
        # nd2 starts at 3 corrected events (seen, not new); it grows to 5 in report 2.
        2: [("neuron_ecc", "mem_corrected", "nd2")],
        4: [("neuron_ecc", "sram_uncorrected", "nd9")],
        6: [("accelerator_count_low", "15/16", "")],
    }
    uncorrected = per_report[4][0]
    assert uncorrected.source == "neuron" and uncorrected.node == "trn-node-1"
    assert "sram_ecc_uncorrected=1" in uncorrected.evidence


def _report(**devices):
    counters = [{"neuron_device_index": int(index[2:]), "mem_ecc_corrected": 0,
                 "mem_ecc_uncorrected": 0, "sram_ecc_corrected": 0, "sram_ecc_uncorrected": 0,
                 **values} for index, values in devices.items()]
    return parse_report(json.dumps({"system_data": {"neuron_hw_counters": {
        "period": 1.0, "neuron_devices": counters, "error": ""}}}))


def test_uncorrected_at_first_sight_is_a_finding_and_is_reported_again_when_it_grows():
    reports = [_report(nd0={"mem_ecc_uncorrected": 1}), _report(nd0={"mem_ecc_uncorrected": 1}),
               _report(nd0={"mem_ecc_uncorrected": 2})]
    assert [len(f) for f in decide(reports, NeuronThresholds())] == [1, 0, 1]


def test_corrected_counts_only_when_it_grows_and_a_reset_lowers_the_baseline():
    counts = [7, 7, 9, 0, 0, 1]
    reports = [_report(nd1={"sram_ecc_corrected": c}) for c in counts]
    assert [len(f) for f in decide(reports, NeuronThresholds())] == [0, 0, 1, 0, 0, 1]


def test_device_count_from_the_counters_when_hardware_info_is_absent():
    per_report = decide([_report(nd0={}, nd1={})], NeuronThresholds(expected_devices=16))
    assert [(f.signal, f.code) for f in per_report[0]] == [("accelerator_count_low", "2/16")]


def test_errors_in_the_report_are_kept():
    report = parse_report(json.dumps({"system_data": {"neuron_hw_counters": {
        "neuron_devices": [], "error": "failed to read the counters"}},
        "neuron_hardware_info": {"error": "driver not loaded"}}))
    assert report.errors == ["neuron_hardware_info: driver not loaded",
                             "neuron_hw_counters: failed to read the counters"]


def test_lines_that_are_not_reports_are_counted():
    parser = NeuronParser()
    lines = [SAMPLE.read_text().splitlines()[0], "{truncated", "[1, 2]", '{"unrelated": 1}']
    assert len(read_reports(lines, parser)) == 1
    assert (parser.lines, parser.skipped) == (4, 3)


def test_absent_binary_disables_the_source_with_one_log_line(caplog):
    monitor = NeuronMonitor(binary="neuron-monitor-absent-here")
    with caplog.at_level(logging.DEBUG, logger="pitstop.daemon.neuron"):
        assert list(monitor.reports()) == []
        assert monitor.enabled is False
        assert list(monitor.reports()) == []
    records = [r.getMessage() for r in caplog.records if r.name == "pitstop.daemon.neuron"]
    assert len(records) == 1 and "disabled" in records[0] and "not found" in records[0]


def test_live_edge_runs_the_binary_and_parses_its_stream(tmp_path, monkeypatch):
    """A stand-in `neuron-monitor` on PATH that prints the sample (and one stray line)."""
    binary = tmp_path / "neuron-monitor"
    binary.write_text(f"#!/bin/sh\necho starting\ncat {SAMPLE}\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monitor = NeuronMonitor(config_path="/etc/neuron-monitor.json")
    assert monitor.argv == [str(binary), "-c", "/etc/neuron-monitor.json"]
    monitor.config_path = None
    reports = list(monitor.reports())
    monitor.close()
    assert len(reports) == 7
    assert (monitor.parser.lines, monitor.parser.skipped) == (8, 1)


@pytest.mark.parametrize("line", ["", "null", '{"neuron_runtime_data": "x"}'])
def test_odd_shapes_do_not_raise(line):
    report = parse_report(line)
    assert report is None or (report.devices, report.cores) == ([], [])
