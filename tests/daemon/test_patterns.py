"""The log patterns are data: every regex matches the real lines written beside it."""

from __future__ import annotations

import pytest

from pitstop.daemon.patterns import (JOBLOG_PATTERNS, KMSG_PATTERNS, Coalescer, GpuMap,
                                     PatternSet, findings_from_lines, normalize_bus_id)
from pitstop.yamlfile import DataFileError, parse_yaml
from pitstop.model import Finding

KMSG = PatternSet.load(KMSG_PATTERNS)
JOBLOG = PatternSet.load(JOBLOG_PATTERNS)

# The kernel-log lines of xid-reference.md, verbatim, and what each must give.
REFERENCE_KMSG = [
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.",
     "xid", "79", "0000:3b:00"),
    ("NVRM: Xid (0000:3b:00): 48, pid=4321, name=python, An uncorrectable double bit error (DBE) "
     "has been detected on GPU in the framebuffer at partition 6, subpartition 0.",
     "xid", "48", "0000:3b:00"),
    ("NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 "
     "(Node Reboot Required)", "xid", "154", "0000:3b:00"),
    ("NVRM: The NVIDIA GPU 0000:3b:00.0 (PCI ID: 10de:2330) installed in this system has fallen "
     "off the bus and is not responding to commands.", "gpu_fallen_off_bus", "", "0000:3b:00"),
    ("nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 44 egress non-posted "
     "PRIV error", "sxid", "12028", "nvswitch0"),
    ("kernel: NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR instance-id=i-0abc nd-id=0 nc-id=0 "
     "serial-num=… action=TERMINATE_INSTANCE", "neuron_hw_error", "SRAM_UNCORRECTABLE_ERROR", "nd0"),
    ("mlx5_core 0000:0c:00.0: mlx5_crdump_collect: unrecoverable hardware error",
     "mlx5_fatal", "", "0000:0c:00.0"),
    ("INFO: task python:1234 blocked for more than 120 seconds.", "hung_task", "python", ""),
    ("blk_update_request: I/O error, dev nvme0n1, sector 123456 op 0x1:(WRITE) flags 0x800 "
     "phys_seg 1 prio class 0", "io_error", "nvme0n1", "nvme0n1"),
    ("I/O error, dev sda, sector 2048 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 2",
     "io_error", "sda", "sda"),
    ("EXT4-fs error (device nvme0n1p1): ext4_find_entry:1455: inode #2: comm python: reading "
     "directory lblock 0", "fs_error", "ext4", "nvme0n1p1"),
    ("XFS (md0): Corruption detected. Unmount and run xfs_repair", "fs_error", "xfs", "md0"),
]

REFERENCE_JOBLOG = [
    ("[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1187, OpType=ALLREDUCE, "
     "NumelIn=..., NumelOut=..., Timeout(ms)=600000) ran for 600081 milliseconds before timing out.",
     "collective_timeout", "nccl_watchdog", ""),
    ("Some NCCL operations have failed or timed out. Due to the asynchronous nature of CUDA kernels, "
     "subsequent GPU operations might run on corrupted/incomplete data.",
     "collective_timeout", "nccl_watchdog", ""),
    ("Heartbeat monitor timed out! Process will be terminated after dumping debug info.",
     "collective_timeout", "nccl_heartbeat", ""),
    ("ProcessGroupNCCL's watchdog got stuck for 480 seconds without making progress in monitoring "
     "enqueued collectives.", "collective_timeout", "nccl_stuck", ""),
    ("NET/IB : Got completion from peer 10.1.2.3<45678> with error 12, opcode 0, len 0, vendor err 129",
     "ib_error", "12", "10.1.2.3"),
    ("ncclRemoteError: A call failed possibly due to a network error or a remote process exiting "
     "prematurely.", "collective_timeout", "nccl_remote_error", ""),
    ("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for "
     "recv operation to complete", "collective_timeout", "gloo_timeout", ""),
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500",
     "collective_timeout", "gloo_closed", ""),
]


@pytest.mark.parametrize("patterns", [KMSG, JOBLOG], ids=["kmsg", "joblog"])
def test_every_example_in_the_data_file_gives_what_it_promises(patterns):
    assert patterns.check_examples() == []
    assert all(p.examples for p in patterns.patterns), "every pattern carries real lines"


@pytest.mark.parametrize("line,signal,code,device", REFERENCE_KMSG)
def test_reference_kernel_lines(line, signal, code, device):
    match = KMSG.match(line)
    assert match is not None, line
    assert (match.signal, match.code, match.device) == (signal, code, device)


@pytest.mark.parametrize("line,signal,code,device", REFERENCE_JOBLOG)
def test_reference_job_log_lines(line, signal, code, device):
    match = JOBLOG.match(line)
    assert match is not None, line
    assert (match.signal, match.code, match.device) == (signal, code, device)


def test_xid_message_drops_pid_and_name():
    match = KMSG.match(REFERENCE_KMSG[0][0])
    assert match.message == "GPU has fallen off the bus."


def test_the_uuid_line_maps_a_bus_id_and_makes_no_finding():
    gpus = GpuMap(uuid_index={"GPU-5a3c1f2e-9d7b-4c1a-8e2f-0b6d4a9c7e31": 2})
    coalescer = Coalescer()
    lines = ["NVRM: GPU at PCI:0000:3b:00: GPU-5a3c1f2e-9d7b-4c1a-8e2f-0b6d4a9c7e31",
             REFERENCE_KMSG[0][0]]
    found = findings_from_lines(lines, KMSG, node="n1", source="kmsg", now=1.0,
                                coalescer=coalescer, gpus=gpus)
    assert [(f.signal, f.code, f.device) for f in found] == [("xid", "79", "gpu2")]
    assert gpus.bus_uuid == {"0000:3b:00": "GPU-5a3c1f2e-9d7b-4c1a-8e2f-0b6d4a9c7e31"}


def test_a_bus_index_map_names_the_gpu():
    gpus = GpuMap(bus_index={"00000000:3B:00.0": 5})
    assert KMSG.match(REFERENCE_KMSG[1][0], gpus).device == "gpu5"
    assert KMSG.match(REFERENCE_KMSG[3][0], gpus).device == "gpu5"


@pytest.mark.parametrize("raw,expected", [
    ("0000:3b:00", "0000:3b:00"), ("0000:3b:00.0", "0000:3b:00"),
    ("00000000:3B:00.0", "0000:3b:00"), ("3b:00.0", "0000:3b:00"), ("weird", "weird")])
def test_bus_ids_normalize(raw, expected):
    assert normalize_bus_id(raw) == expected


@pytest.mark.parametrize("line", [
    "", "usb 1-1: new high-speed USB device number 2 using xhci_hcd",
    "XFS (md0): Mounting V5 Filesystem", "EXT4-fs (nvme0n1p1): mounted filesystem",
    "\x00\x01\x02\xff garbage", "x" * 1_000_000])
def test_ordinary_lines_match_nothing(line):
    assert KMSG.match(line) is None
    assert JOBLOG.match(line) is None


def test_an_sxid_line_is_not_an_xid():
    assert KMSG.match(REFERENCE_KMSG[4][0]).signal == "sxid"


def _finding(evidence: str = "line") -> Finding:
    return Finding(node="n1", signal="xid", code="48", device="gpu0", evidence=evidence, time=0)


def test_a_storm_is_one_finding_with_a_count_and_capped_samples():
    coalescer = Coalescer(quiet_s=60, max_samples=5)
    line = REFERENCE_KMSG[1][0]
    found = findings_from_lines([line] * 10_000, KMSG, node="n1", source="kmsg", now=100.0,
                                coalescer=coalescer)
    assert len(found) == 1
    (bucket,) = coalescer.buckets()
    assert bucket.count == 10_000 and bucket.episodes == 1 and len(bucket.samples) == 5


def test_a_key_quiet_long_enough_starts_a_new_episode():
    coalescer = Coalescer(quiet_s=60)
    assert coalescer.offer(_finding(), 0.0)
    assert not coalescer.offer(_finding(), 59.0)
    assert not coalescer.offer(_finding(), 100.0)  # 41 s after the last line
    assert coalescer.offer(_finding(), 200.0)
    strict = Coalescer(quiet_s=None)
    assert strict.offer(_finding(), 0.0) and not strict.offer(_finding(), 1e9)
    strict.reset()
    assert strict.offer(_finding(), 1e9 + 1)


def test_keys_beyond_the_cap_are_emitted_not_bucketed():
    coalescer = Coalescer(max_keys=2)
    for device in ("gpu0", "gpu1", "gpu2", "gpu3"):
        assert coalescer.offer(Finding(node="n", signal="xid", code="1", device=device), 0.0)
    assert len(coalescer.buckets()) == 2 and coalescer.unbucketed == 2


@pytest.mark.parametrize("text,line,key", [
    ("patterns:\n  - id: a\n    contains: x\n    regex: '(unclosed'\n    signal: s\n", 4, "patterns[0].regex"),
    ("patterns:\n  - id: a\n    contains: x\n    regex: 'x'\n    signal: s\n    colour: red\n", 6,
     "patterns[0].colour"),
    ("patterns:\n  - id: a\n    contains: x\n    regex: 'x(?P<g>y)'\n    signal: s\n    code: '{h}'\n",
     6, "patterns[0].code"),
    ("patterns:\n  - id: a\n    contains: x\n    regex: x\n    signal: s\n"
     "  - id: a\n    contains: y\n    regex: y\n    signal: s\n", 6, "patterns[1].id"),
])
def test_bad_pattern_files_name_the_line_and_key(text, line, key):
    with pytest.raises(DataFileError) as err:
        PatternSet.from_data(parse_yaml(text, "p.yaml"), "p.yaml")
    assert (err.value.file, err.value.line, err.value.key) == ("p.yaml", line, key)
    assert str(err.value).startswith(f"p.yaml:{line}: {key}: ")
