"""The exposition under dcgm-exporter's names and pitstop's own, and the HTTP endpoints
served for real over loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pitstop.daemon
from pitstop.daemon.host import DiskReading, HostReading
from pitstop.daemon.http import serve
from pitstop.daemon.metrics import DCGM_FIELDS, Metrics, bus_key
from pitstop.daemon.neuron import read_reports
from pitstop.daemon.nvml import NvmlReplay
from pitstop.model import Finding, Health

DATA = Path(pitstop.daemon.__file__).parent / "data"


def families(metrics: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def samples(metrics: Metrics, name: str) -> list:
    """Every sample named `name` exactly (a counter family holds `_total` and `_created`)."""
    return [s for f in text_string_to_metric_families(metrics.render().decode())
            for s in f.samples if s.name == name]


def value(metrics: Metrics, name: str, **labels) -> float:
    matching = [s.value for s in samples(metrics, name)
                if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (name, labels, matching)
    return matching[0]


@pytest.fixture
def poll():
    return NvmlReplay(DATA / "nvml-recorded-8xh100.jsonl").recorded[0]


@pytest.fixture
def metrics(poll):
    metrics = Metrics(hostname="gpu-node-1")
    metrics.observe_gpus(poll)
    return metrics


def test_gpu_readings_under_dcgm_exporter_names_and_labels(metrics, poll):
    names = set(families(metrics))
    for required in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL",
                     "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
                     "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                     "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
                     "DCGM_FI_DEV_ROW_REMAP_FAILURE", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
                     "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_PCIE_LINK_GEN",
                     "DCGM_FI_DEV_PCIE_LINK_WIDTH", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
                     "DCGM_FI_DEV_XID_ERRORS"):
        assert required in names
    gpu3 = poll[3]
    temperature = [s for s in samples(metrics, "DCGM_FI_DEV_GPU_TEMP") if s.labels["gpu"] == "3"]
    assert len(temperature) == 1 and temperature[0].value == gpu3.temperature_c
    assert temperature[0].labels == {"gpu": "3", "UUID": gpu3.uuid,
                                     "pci_bus_id": "00000000:5D:00.0", "device": "nvidia3",
                                     "modelName": "NVIDIA H100 80GB HBM3",
                                     "Hostname": "gpu-node-1"}
    assert len(samples(metrics, "DCGM_FI_DEV_POWER_USAGE")) == 8
    assert value(metrics, "DCGM_FI_DEV_FB_USED", gpu="3") == gpu3.memory_used_bytes // 2**20
    assert value(metrics, "DCGM_FI_DEV_FB_FREE", gpu="3") == \
        (gpu3.memory_total_bytes - gpu3.memory_used_bytes) // 2**20
    assert value(metrics, "DCGM_FI_DEV_PCIE_LINK_WIDTH", gpu="0") == 16
    assert value(metrics, "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", gpu="1") == 2
    assert value(metrics, "DCGM_FI_DEV_XID_ERRORS", gpu="5") == 0
    assert value(metrics, "pitstop_gpu_nvlink_up", gpu="2", link="17") == 1


def test_fields_the_gpu_does_not_report_are_left_out_not_zero(metrics):
    # H100s report no retired pages (row remapping replaced them): None, so no sample.
    assert samples(metrics, "DCGM_FI_DEV_RETIRED_SBE") == []
    assert len(samples(metrics, "DCGM_FI_DEV_ROW_REMAP_FAILURE")) == 8


def test_last_xid_per_gpu_by_index_or_by_bus_id(metrics):
    metrics.finding(Finding(node="n", signal="xid", code="79", device="gpu3"))
    metrics.finding(Finding(node="n", signal="xid", code="48", device="0000:9a:00"))
    assert value(metrics, "DCGM_FI_DEV_XID_ERRORS", gpu="3") == 79
    assert value(metrics, "DCGM_FI_DEV_XID_ERRORS", gpu="4") == 48
    assert value(metrics, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 0
    assert bus_key("PCI:0000:3b:00") == bus_key("00000000:3B:00.0") == (0, 0x3B, 0)


def test_a_gpu_that_leaves_the_node_leaves_the_output(metrics, poll):
    metrics.observe_gpus(poll[:7])
    assert sorted(s.labels["gpu"] for s in samples(metrics, "DCGM_FI_DEV_GPU_TEMP")) == \
        [str(i) for i in range(7)]


def test_pitstop_counters_health_breaker_and_kmsg(metrics):
    metrics.finding(Finding(node="n", signal="ecc_dbe_volatile", device="gpu3"))
    metrics.finding(Finding(node="n", signal="ecc_dbe_volatile", device="gpu5"))
    metrics.finding(Finding(node="n", signal="xid", code="79", device="gpu3"))
    metrics.action("drain")
    metrics.health(Health.FENCED)
    metrics.breaker(True)
    metrics.observe_kmsg(lines_total=1200, skipped_total=3)
    assert value(metrics, "pitstop_findings_total", signal="ecc_dbe_volatile", code="") == 2
    assert value(metrics, "pitstop_findings_total", signal="xid", code="79") == 1
    assert value(metrics, "pitstop_actions_total", action="drain") == 1
    states = {s.labels["state"]: s.value for s in samples(metrics, "pitstop_health_state")}
    assert states == {h.value: (1.0 if h is Health.FENCED else 0.0) for h in Health}
    assert value(metrics, "pitstop_breaker_open") == 1
    assert value(metrics, "pitstop_kmsg_lines_total") == 1200
    assert value(metrics, "pitstop_kmsg_skipped_total") == 3
    metrics.health("OK")
    assert value(metrics, "pitstop_health_state", state="OK") == 1
    assert value(metrics, "pitstop_health_state", state="FENCED") == 0


def test_neuron_and_host_readings(metrics):
    report = read_reports((DATA / "neuron-monitor-sample.jsonl").read_text().splitlines())[4]
    metrics.observe_neuron(report)
    metrics.observe_host(HostReading([DiskReading("/ckpt", 1000, 250)], 7 << 30, 64 << 30, 8))
    assert len(samples(metrics, "pitstop_neuron_core_utilization_percent")) == 32
    assert value(metrics, "pitstop_neuron_ecc_events_total", neuron_device="nd9",
                 kind="sram_uncorrected") == 1
    assert value(metrics, "pitstop_neuron_devices") == 16
    assert value(metrics, "pitstop_neuron_device_memory_used_bytes") == report.device_memory_used_bytes
    assert value(metrics, "pitstop_host_disk_free_bytes", path="/ckpt") == 250
    assert value(metrics, "pitstop_host_memory_available_bytes") == 7 << 30
    assert value(metrics, "pitstop_host_accelerators") == 8


def test_each_metrics_object_has_its_own_registry(metrics):
    other = Metrics(hostname="other")
    metrics.action("requeue")
    assert samples(other, "pitstop_actions_total") == []
    assert samples(other, "DCGM_FI_DEV_GPU_TEMP") == []
    global_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert "pitstop_actions" not in global_names


def test_every_dcgm_field_reads_a_real_reading_field(poll):
    for spec in DCGM_FIELDS:
        spec.value(poll[0])  # raises AttributeError on a misspelt field


# ---------------------------------------------------------------- HTTP over loopback

def get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers["Content-Type"], response.read()


def test_metrics_and_status_served_over_loopback(metrics):
    status = {"node": "gpu-node-1", "health": "OK", "findings": []}
    with serve(metrics, lambda: status, port=0) as server:
        assert server.host == "127.0.0.1" and server.port > 0
        code, content_type, body = get(f"{server.url}/metrics")
        assert code == 200 and content_type.startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_XID_ERRORS", "pitstop_findings",
                "pitstop_health_state"} <= names
        code, content_type, body = get(f"{server.url}/status")
        assert (code, content_type, json.loads(body)) == (200, "application/json", status)
        status["health"] = "FENCED"
        assert json.loads(get(f"{server.url}/status?fresh=1")[2])["health"] == "FENCED"
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(f"{server.url}/nothing")
        assert missing.value.code == 404


def test_a_failing_status_provider_answers_500_and_metrics_still_serve(metrics):
    def broken():
        raise RuntimeError("state file unreadable")

    with serve(metrics, broken, port=0) as server:
        with pytest.raises(urllib.error.HTTPError) as failed:
            get(f"{server.url}/status")
        assert failed.value.code == 500
        assert json.loads(failed.value.read()) == {"error": "RuntimeError: state file unreadable"}
        assert get(f"{server.url}/metrics")[0] == 200


def test_closed_server_no_longer_answers(metrics):
    server = serve(metrics, dict, port=0)
    url = server.url
    server.close()
    with pytest.raises(urllib.error.URLError):
        get(f"{url}/metrics")
