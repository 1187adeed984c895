"""The host source on this machine's real file systems, memory and device files."""

from __future__ import annotations

import os
import stat

import psutil
import pytest

from pitstop.daemon.host import (Amount, DiskReading, HostReading, HostState, HostThresholds,
                                 count_accelerators, findings_from_host, read_disk, read_host)


def decide(reading, thresholds, state=None):
    return findings_from_host("node-1", reading, state or HostState(), thresholds, now=50.0)


def keys(findings):
    return sorted((f.signal, f.code, f.device) for f in findings)


@pytest.mark.parametrize("text, expected", [
    ("10%", Amount(percent=10.0)),
    ("50GiB", Amount(bytes=50 * 1024**3)),
    ("200G", Amount(bytes=200 * 1000**3)),
    ("1.5 TiB", Amount(bytes=int(1.5 * 1024**4))),
    (1073741824, Amount(bytes=1073741824)),
    ("4096", Amount(bytes=4096)),
])
def test_amounts(text, expected):
    assert Amount.parse(text) == expected


@pytest.mark.parametrize("text", ["ten", "10 parsecs", "120%", "-5G", ""])
def test_bad_amounts_are_refused(text):
    with pytest.raises(ValueError, match="not a"):
        Amount.parse(text)


def test_a_real_path_below_its_limit_is_disk_low(tmp_path):
    free = psutil.disk_usage(str(tmp_path)).free
    thresholds = HostThresholds(min_free={str(tmp_path): Amount(bytes=free + 10 * 1024**3)})
    findings, _ = decide(read_host(thresholds), thresholds)
    assert keys(findings) == [("disk_low", "", str(tmp_path))]
    assert findings[0].source == "host" and "below the limit" in findings[0].message
    assert f"limit={free + 10 * 1024**3}" in findings[0].evidence


def test_a_percent_limit_above_the_free_share_is_disk_low_and_a_small_one_is_not(tmp_path):
    low = HostThresholds.from_dict({"disk": {str(tmp_path): "100%"}})
    fine = HostThresholds.from_dict({"disk": {str(tmp_path): "1KiB"}})
    assert keys(decide(read_host(low), low)[0]) == [("disk_low", "", str(tmp_path))]
    assert decide(read_host(fine), fine)[0] == []


def test_a_missing_path_is_disk_low_with_the_reason(tmp_path):
    missing = str(tmp_path / "not-mounted")
    reading = read_disk(missing)
    assert reading.free_bytes is None and "FileNotFoundError" in reading.error
    thresholds = HostThresholds(min_free={missing: Amount(percent=5)})
    findings, _ = decide(read_host(thresholds), thresholds)
    assert keys(findings) == [("disk_low", "", missing)]
    assert "cannot be read" in findings[0].message


def test_memory_against_real_available_memory():
    memory = psutil.virtual_memory()
    low = HostThresholds(memory_min_available=Amount(bytes=memory.total + 1))
    fine = HostThresholds(memory_min_available=Amount(bytes=1))
    assert keys(decide(read_host(low), low)[0]) == [("memory_low", "", "")]
    assert decide(read_host(fine), fine)[0] == []


def test_each_condition_is_reported_once_while_it_holds():
    thresholds = HostThresholds(min_free={"/ckpt": Amount(percent=10)}, expected_accelerators=8)
    short = HostReading([DiskReading("/ckpt", 1000, 50)], 10, 100, accelerators_found=7)
    ok = HostReading([DiskReading("/ckpt", 1000, 500)], 10, 100, accelerators_found=8)
    state, counts = HostState(), []
    for reading in (short, short, ok, short):
        findings, state = decide(reading, thresholds, state)
        counts.append(keys(findings))
    assert counts == [[("accelerator_count_low", "7/8", ""), ("disk_low", "", "/ckpt")], [], [],
                      [("accelerator_count_low", "7/8", ""), ("disk_low", "", "/ckpt")]]


def test_a_disk_that_keeps_filling_is_reported_again_per_percent_of_its_size():
    thresholds = HostThresholds(min_free={"/ckpt": Amount(percent=10)})
    state, counts = HostState(), []
    for free in (95, 94, 91, 89, 85, 86, 80):  # of 1000 bytes; the limit is 100; 1% is 10
        findings, state = decide(HostReading([DiskReading("/ckpt", 1000, free)], 1, 1, 0),
                                 thresholds, state)
        counts.append(len(findings))
    assert counts == [1, 0, 0, 1, 0, 0, 1]


def test_unknown_settings_are_named():
    with pytest.raises(ValueError, match="unknown host setting.*disks"):
        HostThresholds.from_dict({"disks": {}})


@pytest.mark.skipif(os.geteuid() != 0, reason="os.mknod of character devices needs root")
def test_accelerator_count_from_real_character_devices(tmp_path):
    nvidia_major = 195
    for minor in range(4):
        os.mknod(tmp_path / f"nvidia{minor}", 0o600 | stat.S_IFCHR, os.makedev(nvidia_major, minor))
    os.mknod(tmp_path / "nvidiactl", 0o600 | stat.S_IFCHR, os.makedev(nvidia_major, 255))
    (tmp_path / "nvidia5").write_text("a regular file is not a device")
    pattern = str(tmp_path / "nvidia[0-9]*")
    assert count_accelerators(pattern) == 4
    thresholds = HostThresholds(expected_accelerators=8, accelerator_glob=pattern)
    findings, _ = decide(read_host(thresholds), thresholds)
    assert keys(findings) == [("accelerator_count_low", "4/8", "")]
    assert decide(read_host(HostThresholds(expected_accelerators=4, accelerator_glob=pattern)),
                  HostThresholds(expected_accelerators=4, accelerator_glob=pattern))[0] == []

