"""The check registry, the quick checks' rules and the full checks on this CPU."""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pitstop.daemon.nvml import GpuReading
from pitstop.hooks import checks_quick, nvml_read
from pitstop.hooks.checks import (CheckContext, CheckResult, overall, registered, run_level,
                                  summary)
from pitstop.hooks.config import Amount, FullSettings, HooksConfig

TINY_FULL = FullSettings(matmul_size=128, matmul_seconds=0.1, bandwidth_mib=16, bandwidth_iterations=3,
                         allreduce_mib=1, allreduce_iterations=3)


def by_name(results, name):
    return [r for r in results if r.name == name]


def test_registry_has_every_check_of_the_issue_with_a_level():
    checks = registered()
    quick = {n for n, c in checks.items() if c.level == "quick"}
    full = {n for n, c in checks.items() if c.level == "full"}
    assert {"nvml", "gpu_count", "ecc_dbe", "row_remap", "retired_pages", "pcie_link", "neuron_count",
            "disk_free", "mounts", "agent", "clock_sync"} <= quick
    assert {"matmul", "sdc", "memory_bandwidth", "allreduce"} <= full


def test_quick_without_driver_or_settings_skips_everything_and_passes_fast():
    results = run_level("quick", CheckContext(HooksConfig(), node="n1"))
    assert overall(results) == "pass"
    assert by_name(results, "nvml")[0].status == "skip"
    assert "NVML" in by_name(results, "ecc_dbe")[0].message
    assert sum(r.seconds for r in results) < 5
    json.dumps([r.to_dict() for r in results])  # crosses processes as JSON


def test_gpu_count_counts_character_devices_against_expected(tmp_path):
    for index in range(2):
        os.mknod(tmp_path / f"nvidia{index}", 0o666 | 0o020000, os.makedev(195, index))
    (tmp_path / "nvidia7").write_text("a plain file is not a device")
    glob = str(tmp_path / "nvidia[0-9]*")
    ok = run_level("quick", CheckContext(HooksConfig(expected_gpus=2, accelerator_glob=glob)), ["gpu_count"])
    short = run_level("quick", CheckContext(HooksConfig(expected_gpus=4, accelerator_glob=glob)), ["gpu_count"])
    assert (ok[0].status, ok[0].value) == ("pass", 2)
    assert (short[0].status, short[0].value, short[0].threshold) == ("fail", 2, 4)
    assert "2 GPU(s) found, 4 expected" in short[0].message


def test_disk_free_fails_below_a_percent_or_an_absolute_limit(tmp_path):
    config = HooksConfig(min_free={str(tmp_path): Amount.parse("0%"), "/": Amount.parse("1000TiB"),
                                   str(tmp_path / "gone"): Amount.parse("1G")})
    results = {r.device: r for r in run_level("quick", CheckContext(config), ["disk_free"])}
    assert results[str(tmp_path)].status == "pass"
    assert results["/"].status == "fail" and "below 1000.0TiB" in results["/"].message
    assert results[str(tmp_path / "gone")].status == "fail"


@pytest.mark.parametrize("text,expected", [("10%", Amount(percent=10)), ("50GiB", Amount(bytes=50 << 30)),
                                           ("200G", Amount(bytes=200 * 10**9)), (1024, Amount(bytes=1024))])
def test_amounts_parse(text, expected):
    assert Amount.parse(text) == expected


@pytest.mark.parametrize("text", ["ten", "120%", "5 parsecs"])
def test_bad_amounts_are_refused(text):
    with pytest.raises(ValueError):
        Amount.parse(text)


def test_judge_free_names_free_space_and_share():
    status, message = checks_quick.judge_free(5 << 30, 100 << 30, Amount.parse("10%"))
    assert status == "fail" and "5.0GiB free (5.0%)" in message


def test_mounts_reads_proc_mounts():
    assert checks_quick.mounted_points("proc /proc proc rw 0 0\n/dev/x /mnt/my\\040disk ext4 rw 0 0\n") == \
        {"/proc", "/mnt/my disk"}
    results = run_level("quick", CheckContext(HooksConfig(mounts=["/", "/no/such/mount"])), ["mounts"])
    assert [(r.device, r.status) for r in results] == [("/", "pass"), ("/no/such/mount", "fail")]


@pytest.fixture
def status_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            code = 200 if self.path == "/status" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_agent_check_passes_when_status_answers_and_fails_when_nothing_listens(status_server):
    alive = run_level("quick", CheckContext(HooksConfig(agent_port=status_server)), ["agent"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = run_level("quick", CheckContext(HooksConfig(agent_port=dead_port)), ["agent"])
    assert alive[0].status == "pass"
    assert dead[0].status == "fail" and str(dead_port) in dead[0].message


@pytest.mark.parametrize("text,status", [("NTPSynchronized=yes\n", "pass"), ("NTPSynchronized=no\n", "warn"),
                                         ("garbage", "skip")])
def test_timedatectl_output(text, status):
    assert checks_quick.judge_timedatectl(text)[0] == status


def test_chronyc_output():
    assert checks_quick.judge_chronyc("Reference ID : 1\nLeap status     : Normal\n")[0] == "pass"
    assert checks_quick.judge_chronyc("Leap status     : Not synchronised\n")[0] == "warn"


def test_clock_check_skips_with_the_reason_where_no_tool_answers():
    (result,) = run_level("quick", CheckContext(HooksConfig()), ["clock_sync"])
    assert result.status in {"pass", "warn", "skip"}
    if result.status == "skip":
        assert result.message


@pytest.mark.parametrize("counters,judge,status", [
    (dict(ecc_dbe_volatile=0), nvml_read.judge_dbe, "pass"),
    (dict(ecc_dbe_volatile=2), nvml_read.judge_dbe, "fail"),
    (dict(row_remap_pending=True, row_remap_failure=False), nvml_read.judge_remap, "fail"),
    (dict(row_remap_pending=False, row_remap_failure=True), nvml_read.judge_remap, "fail"),
    (dict(row_remap_pending=False, row_remap_failure=False), nvml_read.judge_remap, "pass"),
    (dict(retired_pages_pending=True), nvml_read.judge_retired, "fail"),
    (dict(pcie_width=8, pcie_width_max=16, pcie_gen=5, pcie_gen_max=5), nvml_read.judge_pcie, "fail"),
    (dict(pcie_width=16, pcie_width_max=16, pcie_gen=1, pcie_gen_max=5), nvml_read.judge_pcie, "warn"),
    (dict(pcie_width=16, pcie_width_max=16, pcie_gen=5, pcie_gen_max=5), nvml_read.judge_pcie, "pass"),
    (dict(), nvml_read.judge_dbe, "skip"),
])
def test_gpu_counter_rules(counters, judge, status):
    assert judge(GpuReading(index=0, **counters))[0] == status


def test_gpu_checks_report_per_gpu_from_a_snapshot():
    snap = nvml_read.NvmlSnapshot([GpuReading(0, ecc_dbe_volatile=0), GpuReading(1, ecc_dbe_volatile=3)])
    ctx = CheckContext(HooksConfig(expected_gpus=2))
    ctx.cache["nvml"] = snap
    results = run_level("quick", ctx, ["nvml", "gpu_count", "ecc_dbe"])
    assert [(r.name, r.device, r.status) for r in results] == [
        ("nvml", "", "pass"), ("gpu_count", "", "pass"), ("ecc_dbe", "gpu0", "pass"), ("ecc_dbe", "gpu1", "fail")]
    assert summary(results) == "ecc_dbe gpu1: 3 volatile double-bit ECC error(s)"


def test_nvml_required_fails_without_a_driver():
    ctx = CheckContext(HooksConfig(nvml="required"))
    ctx.cache["nvml"] = nvml_read.NvmlSnapshot([], "NVML did not initialise: no library", driver_missing=True)
    assert run_level("quick", ctx, ["nvml"])[0].status == "fail"


def test_a_crashing_quick_check_warns_and_a_crashing_full_check_fails(monkeypatch):
    from pitstop.hooks import checks
    monkeypatch.setitem(checks.REGISTRY, "mounts", checks.Check(
        "mounts", "quick", "", lambda c: "", lambda ctx: 1 / 0))
    monkeypatch.setitem(checks.REGISTRY, "allreduce", checks.Check(
        "allreduce", "full", "", lambda c: "", lambda ctx: 1 / 0))
    (result,) = run_level("quick", CheckContext(HooksConfig()), ["mounts"])
    assert result.status == "warn" and "ZeroDivisionError" in result.message
    (unproven,) = run_level("full", CheckContext(HooksConfig()), ["allreduce"])
    assert unproven.status == "fail"


def test_result_status_is_validated():
    with pytest.raises(ValueError):
        CheckResult("x", "quick", "ok")


@pytest.fixture(scope="module")
def full_results():
    return run_level("full", CheckContext(HooksConfig(full=TINY_FULL), env={}), )


def test_full_check_does_real_work_on_the_cpu(full_results):
    matmul = by_name(full_results, "matmul")
    assert [r.device for r in matmul] == ["cpu0", "cpu1"]
    assert all(r.value > 0 and r.unit == "GFLOP/s" for r in matmul)
    assert all(r.status == "pass" for r in by_name(full_results, "sdc"))
    (bandwidth,) = by_name(full_results, "memory_bandwidth")
    (allreduce,) = by_name(full_results, "allreduce")
    assert bandwidth.value > 0 and allreduce.value > 0 and "2 ranks" in allreduce.message
    print("full check figures:", {f"{r.name}[{r.device}]": f"{r.value} {r.unit}" for r in full_results
                                  if r.level == "full"})


def test_corruption_knob_fails_that_device_only():
    from pitstop.hooks.checks_full import CORRUPT_ENV
    results = run_level("full", CheckContext(HooksConfig(full=TINY_FULL), env={CORRUPT_ENV: "1"}), ["sdc"])
    assert [(r.device, r.status) for r in results] == [("cpu0", "pass"), ("cpu1", "fail")]
    assert "against float64" in results[1].message and "differs from device 0" in results[1].message


def test_sdc_rule_flags_a_device_that_differs_from_its_peers():
    from pitstop.hooks.checks_full import judge_sdc
    verdicts = judge_sdc([1e-7, 1e-7], [0.0, 5e-2], [True, True], 1e-3)
    assert [v[0] for v in verdicts] == ["pass", "fail"]
    assert judge_sdc([1e-7], [0.0], [False], 1e-3)[0][0] == "fail"


def test_a_hung_nvml_read_fails_in_time_instead_of_hanging_the_hook():
    import time as time_module
    started = time_module.monotonic()
    snap = checks_quick.snapshot_within(lambda: time_module.sleep(5), 0.2)
    assert time_module.monotonic() - started < 2
    ctx = CheckContext(HooksConfig())
    ctx.cache["nvml"] = snap
    (result,) = run_level("quick", ctx, ["nvml"])
    assert result.status == "fail" and "did not answer within 0.2s" in result.message
    fine = checks_quick.snapshot_within(lambda: nvml_read.NvmlSnapshot([GpuReading(0)]), 5)
    assert len(fine.gpus) == 1
