"""The faults `pitstop testbed inject` knows, as the log lines real hardware writes.

Kernel faults become records in the node's kernel-log file, in /dev/kmsg's own record
format (`prio,seq,usec,flags;message`), so the agent reads the testbed exactly as it
reads a real node. Job-log faults become lines in a running job's output file. The
line texts are the forms in shared/xid-reference.md.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

# PCI bus ids of an 8-GPU HGX board, in GPU index order.
GPU_BUS_IDS = ["0000:18:00", "0000:2a:00", "0000:3a:00", "0000:5d:00",
               "0000:9a:00", "0000:ab:00", "0000:ba:00", "0000:db:00"]

XID_TEXT = {
    8: "GPU stopped processing",
    13: "Graphics SM Warp Exception on (GPC 1, TPC 0, SM 0): Out Of Range Address",
    31: "Ch 00000008, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f12_34560000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ",
    32: "Channel ID 00000010 intr0 00040000",
    38: "Driver firmware watchdog timeout",
    43: "Ch 00000010, engmask 00000101, intr 10000000",
    45: "Ch 00000010, engmask 00000101, intr 10000000",
    46: "GPU timeout",
    48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.",
    54: "Auxiliary power is not connected to the GPU board",
    62: "Internal micro-controller halt",
    63: "Row Remapper: New row marked for remapping, reset gpu to activate.",
    64: "Row Remapper: Failed to mark row for remapping",
    74: "NVLink: fatal error detected on link 4(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)",
    79: "GPU has fallen off the bus.",
    92: "High single-bit ECC error rate",
    94: "Contained: SM (0x1). RST: No, D-RST: No",
    95: "Uncontained: FBHUB. RST: Yes, D-RST: No",
    109: "Context switch timeout",
    119: "Timeout after 6s of waiting for RPC response from GPU0 GSP! Expected function 76 (GSP_RM_CONTROL) (0x20801348 0x4).",
    120: "GSP task exception",
    137: "NVLink privilege error",
    140: "An unrecoverable ECC error was detected",
    154: "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
}

NEURON_KINDS = {
    "sram": "SRAM_UNCORRECTABLE_ERROR",
    "hbm": "HBM_UNCORRECTABLE_ERROR",
    "nc": "NC_UNCORRECTABLE_ERROR",
    "dma": "DMA_ERROR",
}

JOBLOG_LINES = {
    "nccl-timeout": [
        "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1187, OpType=ALLREDUCE, NumelIn=1048576, NumelOut=1048576, Timeout(ms)=600000) ran for 600081 milliseconds before timing out.",
        "Some NCCL operations have failed or timed out. Due to the asynchronous nature of CUDA kernels, subsequent GPU operations might run on corrupted/incomplete data.",
    ],
    "nccl-heartbeat": [
        "Heartbeat monitor timed out! Process will be terminated after dumping debug info.",
    ],
    "gloo-timeout": [
        "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for recv operation to complete",
    ],
    "ib-error": [
        "NET/IB : Got completion from peer 10.1.2.3<45678> with error 12, opcode 0, len 0, vendor err 129",
        "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely.",
    ],
}


@dataclass(frozen=True)
class Fault:
    name: str
    target: str  # "kmsg" | "joblog" | "slurmd"
    help: str


FAULTS = [
    Fault("xid:<code>[:<gpu>]", "kmsg", "an NVIDIA XID line for GPU <gpu> (default 0), e.g. xid:79:2"),
    Fault("fallen-off-bus[:<gpu>]", "kmsg", "the 'has fallen off the bus' line and XID 79"),
    Fault("sxid:<code>", "kmsg", "an NVSwitch SXid line"),
    Fault("neuron:<kind>", "kmsg", f"a NEURON_HW_ERR line; kinds: {', '.join(NEURON_KINDS)}"),
    Fault("mlx5-fatal", "kmsg", "a Mellanox HCA unrecoverable hardware error"),
    Fault("hung-task", "kmsg", "a 'blocked for more than 120 seconds' line"),
    Fault("io-error", "kmsg", "a block-layer I/O error"),
    Fault("noise", "kmsg", "an unrelated kernel line"),
    *(Fault(name, "joblog", f"the {name} lines in the output of the jobs on the node")
      for name in JOBLOG_LINES),
    Fault("slurmd-stop", "slurmd", "stop the node's slurmd (SIGKILL), as a dead node would"),
    Fault("slurmd-start", "slurmd", "start the node's slurmd again"),
]


class FaultError(ValueError):
    pass


def describe() -> str:
    width = max(len(f.name) for f in FAULTS)
    return "\n".join(f"  {f.name.ljust(width)}  {f.help}" for f in FAULTS)


def target_of(fault: str) -> str:
    name = fault.split(":")[0]
    if name in {"xid", "fallen-off-bus", "sxid", "neuron", "mlx5-fatal", "hung-task",
                "io-error", "noise"}:
        return "kmsg"
    if name in JOBLOG_LINES:
        return "joblog"
    if name in {"slurmd-stop", "slurmd-start"}:
        return "slurmd"
    raise FaultError(f"unknown fault {fault!r}; known faults:\n{describe()}")


def _gpu(parts: list[str], index: int, gpus: int) -> int:
    if len(parts) <= index or parts[index] == "":
        return 0
    if not parts[index].isdigit():
        raise FaultError(f"GPU index {parts[index]!r} is not a number")
    gpu = int(parts[index])
    if gpu >= max(gpus, 1) or gpu >= len(GPU_BUS_IDS):
        raise FaultError(f"GPU {gpu} does not exist on a node with {gpus} GPUs")
    return gpu


def kernel_messages(fault: str, gpus: int = 8) -> list[str]:
    """The kernel-log messages (without the record prefix) that `fault` writes."""
    parts = fault.split(":")
    name = parts[0]
    if name == "xid":
        if len(parts) < 2 or not parts[1].isdigit():
            raise FaultError(f"{fault!r}: expected xid:<code>[:<gpu>], e.g. xid:79:2")
        code, gpu = int(parts[1]), _gpu(parts, 2, gpus)
        text = XID_TEXT.get(code, "Unknown Xid")
        # Real drivers write both forms: "(PCI:0000:3b:00)" and "(0000:3b:00)".
        bus = f"PCI:{GPU_BUS_IDS[gpu]}" if code % 2 else GPU_BUS_IDS[gpu]
        pid_part = "" if code == 154 else f" pid={4000 + gpu}, name=python,"
        return [f"NVRM: Xid ({bus}): {code},{pid_part} {text}".replace(",,", ",")]
    if name == "fallen-off-bus":
        gpu = _gpu(parts, 1, gpus)
        return [
            f"NVRM: The NVIDIA GPU {GPU_BUS_IDS[gpu]}.0 (PCI ID: 10de:2330) installed in this "
            "system has fallen off the bus and is not responding to commands.",
            f"NVRM: Xid (PCI:{GPU_BUS_IDS[gpu]}): 79, pid={4000 + gpu}, name=python, GPU has fallen off the bus.",
        ]
    if name == "sxid":
        if len(parts) < 2 or not parts[1].isdigit():
            raise FaultError(f"{fault!r}: expected sxid:<code>")
        return [f"nvidia-nvswitch0: SXid (PCI:0000:05:00.0): {parts[1]}, Non-fatal, "
                "Link 44 egress non-posted PRIV error"]
    if name == "neuron":
        kind = parts[1] if len(parts) > 1 else ""
        if kind not in NEURON_KINDS:
            raise FaultError(f"{fault!r}: neuron kinds are {', '.join(NEURON_KINDS)}")
        return [f"NEURON_HW_ERR={NEURON_KINDS[kind]} instance-id=i-0abc1234def567890 nd-id=0 "
                "nc-id=0 serial-num=ABC123 action=TERMINATE_INSTANCE"]
    if name == "mlx5-fatal":
        return ["mlx5_core 0000:0c:00.0: mlx5_crdump_collect: unrecoverable hardware error"]
    if name == "hung-task":
        return ["INFO: task python:4242 blocked for more than 120 seconds."]
    if name == "io-error":
        return ["blk_update_request: I/O error, dev nvme0n1, sector 123456 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 0"]
    if name == "noise":
        return ["e1000e 0000:00:1f.6 eno1: NIC Link is Up 1000 Mbps Full Duplex, Flow Control: None"]
    raise FaultError(f"{fault!r} is not a kernel-log fault")


def boot_messages(gpus: int) -> list[str]:
    """What the NVIDIA driver logs at load: one bus-id -> UUID line per GPU."""
    lines = ["Linux version 6.1.0-pitstop-testbed (testbed boot)"]
    for index in range(min(gpus, len(GPU_BUS_IDS))):
        lines.append(f"NVRM: GPU at PCI:{GPU_BUS_IDS[index]}: GPU-{_uuid_for(index)}")
    return lines


def _uuid_for(index: int) -> str:
    return f"5a3c1f2e-9d7b-4c1a-8e2f-0b6d4a9c7e{index:02d}"


def joblog_lines(fault: str) -> list[str]:
    if fault not in JOBLOG_LINES:
        raise FaultError(f"{fault!r} is not a job-log fault; known: {', '.join(JOBLOG_LINES)}")
    return list(JOBLOG_LINES[fault])


_SEQ = re.compile(rb"^\d+,(\d+),")


def _last_seq(path: Path) -> int:
    """The sequence number of the file's last record (reads only its tail)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            tail = fh.read().splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(tail):
        match = _SEQ.match(line)
        if match:
            return int(match.group(1))
    return -1


def append_kernel_records(path: Path, messages: list[str], repeat: int = 1,
                          priority: int = 3, boot_time: float | None = None) -> int:
    """Append messages to a kernel-log file as /dev/kmsg records; returns records written.

    One write per call, so a follower never sees half a storm's worth of lines more
    than once, and sequence numbers continue from the file's last record.
    """
    seq = _last_seq(path) + 1
    base = boot_time if boot_time is not None else _boot_time(path)
    usec = int((time.time() - base) * 1_000_000)
    out = []
    for _ in range(repeat):
        for message in messages:
            out.append(f"{priority},{seq},{usec},-;{message}\n")
            seq += 1
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(out))
        fh.flush()
    return len(out)


def _boot_time(path: Path) -> float:
    """When the node last booted: the time its boot-id file was written."""
    try:
        return path.with_name(f"{path.name}.boot_id").stat().st_mtime
    except FileNotFoundError:
        return time.time()
