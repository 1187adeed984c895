"""The testbed's layout on disk and the Slurm configuration rendered from it.

Everything a testbed owns lives under one directory, so two testbeds in two directories
never share a file, a socket or a port. The layout is recorded in `testbed.json` so that
`up` on a running testbed, `down` and `status` all see the same cluster.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pitstop.fsutil import write_json_atomic

DEFAULT_DIR = Path("/tmp/pitstop-testbed")
STATE_FILE = "testbed.json"
PARTITION = "debug"


@dataclass
class Layout:
    """Where a testbed's files are, how many nodes it has and which ports they use."""

    dir: Path
    nodes: int = 3
    gpus_per_node: int = 0
    cpus_per_node: int = 2
    memory_mb: int = 1000
    ctld_port: int = 0
    node_ports: list[int] = field(default_factory=list)
    ssh_port: int = 0
    agents: bool = False
    agent_ports: list[int] = field(default_factory=list)
    db_port: int = 0  # MariaDB, for slurmdbd (pitstop.testbed.accounting)
    dbd_port: int = 0  # slurmdbd

    @property
    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    @property
    def slurm_conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    @property
    def gres_conf(self) -> Path:
        return self.dir / "etc" / "gres.conf"

    @property
    def munge_dir(self) -> Path:
        return self.dir / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    @property
    def munge_key(self) -> Path:
        return self.munge_dir / "munge.key"

    @property
    def munge_pid(self) -> Path:
        return self.munge_dir / "munged.pid"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def slurmdbd_conf(self) -> Path:
        return self.dir / "etc" / "slurmdbd.conf"

    @property
    def db_dir(self) -> Path:
        return self.dir / "db"

    @property
    def db_init(self) -> Path:
        return self.db_dir / "init.sql"

    @property
    def db_pid(self) -> Path:
        return self.db_dir / "run" / "mariadbd.pid"

    @property
    def dbd_pid(self) -> Path:
        return self.run_dir / "slurmdbd.pid"

    @property
    def ctld_pid(self) -> Path:
        return self.run_dir / "slurmctld.pid"

    def slurmd_pid(self, node: str) -> Path:
        return self.run_dir / f"slurmd-{node}.pid"

    @property
    def reboot_program(self) -> Path:
        return self.dir / "bin" / "reboot"

    @property
    def kmsg_dir(self) -> Path:
        return self.dir / "kmsg"

    def kmsg_file(self, node: str) -> Path:
        """The node's kernel-log file: the testbed's stand-in for /dev/kmsg."""
        return self.kmsg_dir / node

    @property
    def dev_dir(self) -> Path:
        return self.dir / "dev"

    @property
    def jobs_dir(self) -> Path:
        """A directory every job may write to (job outputs in tests and the demo)."""
        return self.dir / "jobs"

    @property
    def hooks_config(self) -> Path:
        """The hooks' settings for every testbed node (the agents' return check reads it)."""
        return self.dir / "etc" / "hooks.yaml"

    @property
    def thresholds_file(self) -> Path:
        return self.dir / "etc" / "thresholds.yaml"

    @property
    def ssh_dir(self) -> Path:
        return self.dir / "ssh"

    @property
    def agent_root(self) -> Path:
        """The testbed's stand-in for the shared state path: one sub-directory per agent."""
        return self.dir / "agents"

    def agent_state_dir(self, node: str) -> Path:
        return self.agent_root / node

    def env(self) -> dict[str, str]:
        """The environment Slurm's commands and pitstop's need to talk to this testbed."""
        return {"SLURM_CONF": str(self.slurm_conf), "PITSTOP_STATE_DIR": str(self.agent_root)}

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        write_json_atomic(self.dir / STATE_FILE, data, indent=2)

    @classmethod
    def load(cls, directory: Path) -> "Layout | None":
        path = Path(directory) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        data["dir"] = Path(data["dir"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def free_port_block(count: int, low: int = 20000, high: int = 60000) -> int:
    """The first port of `count` consecutive ports that nothing listens on now.

    The start is derived from the process id so that two testbeds brought up at the same
    moment rarely race for the same block; each candidate is checked by binding it.
    """
    span = high - low - count
    start = low + (os.getpid() * 97) % span
    for attempt in range(0, span, count + 1):
        base = low + (start - low + attempt) % span
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports between {low} and {high}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def render_slurm_conf(layout: Layout) -> str:
    """slurm.conf for a one-host cluster of `layout.nodes` slurmd, tuned for fast tests.

    The settings come from shared/slurm-testbed.md: a short credential lifetime and a
    one-second scheduler so that a requeued job runs again within seconds, and the
    config_overrides flag so that every node may claim more CPUs than the host has.
    """
    d = layout.dir
    lines = [
        "# Written by `pitstop testbed up`; rewritten on every up.",
        "ClusterName=pitstop",
        "SlurmctldHost=localhost",
        f"SlurmctldPort={layout.ctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"AuthInfo=socket={layout.munge_socket},cred_expire=5",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "CommunicationParameters=NoInAddrAny",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        # slurmdbd, as on a production cluster: without it a job resizes only once.
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=localhost",
        f"AccountingStoragePort={layout.dbd_port}",
        f"AccountingStoragePass={layout.munge_socket}",  # slurmdbd's munge socket
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={layout.log_dir / 'jobcomp.log'}",
        "JobAcctGatherType=jobacct_gather/none",
        "MailProg=/bin/true",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1,"
        "permit_job_expansion",
        "SlurmdParameters=config_overrides",
        "ReturnToService=1",
        "JobRequeue=1",
        f"RebootProgram={layout.reboot_program}",
        "GresTypes=gpu",
        "MpiDefault=none",
        f"StateSaveLocation={d / 'state'}",
        f"SlurmctldPidFile={layout.ctld_pid}",
        f"SlurmctldLogFile={layout.log_dir / 'slurmctld.log'}",
        f"SlurmdPidFile={layout.run_dir / 'slurmd-%n.pid'}",
        f"SlurmdLogFile={layout.log_dir / 'slurmd-%n.log'}",
        f"SlurmdSpoolDir={d / 'spool' / '%n'}",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=10",
        "InactiveLimit=0",
        "KillWait=5",
        "MinJobAge=300",
        "Waittime=0",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    gres = f" Gres=gpu:{layout.gpus_per_node}" if layout.gpus_per_node else ""
    for name, port in zip(layout.node_names, layout.node_ports):
        lines.append(
            f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
            f"CPUs={layout.cpus_per_node} RealMemory={layout.memory_mb}{gres} State=UNKNOWN"
        )
    lines.append(
        f"PartitionName={PARTITION} Nodes={','.join(layout.node_names)} Default=YES "
        "MaxTime=INFINITE State=UP OverSubscribe=NO"
    )
    return "\n".join(lines) + "\n"


# The full check on the testbed: tiny loads, so a return check takes seconds.
TINY_FULL = ("full: {matmul_size: 128, matmul_seconds: 0.1, bandwidth_mib: 16, bandwidth_iterations: 3,"
             " allreduce_mib: 1, allreduce_iterations: 3}\n")

# The flow is under test on the testbed, not this (shared, loaded) CPU's speed: limits
# no CPU misses. A broken device still fails (the SDC check compares results).
LENIENT_THRESHOLDS = """\
default:
  matmul_gflops: {fail_below: 0.0001}
  memory_bandwidth_gbs: {fail_below: 0.0001}
  allreduce_busbw_gbs: {fail_below: 0.00001}
  sdc_tolerance: 1.0e-3
"""


def render_hooks_config(layout: Layout) -> str:
    """hooks.yaml for the testbed: its GPU device files, a tiny full check, lenient limits."""
    lines = [f"thresholds_file: {layout.thresholds_file}", "device_model: lenient"]
    if layout.gpus_per_node:
        lines += [f"accelerator_glob: {layout.dev_dir}/nvidia[0-9]*", f"expected_gpus: {layout.gpus_per_node}"]
    return "\n".join(lines) + "\n" + TINY_FULL


def render_gres_conf(layout: Layout) -> str:
    """gres.conf naming the testbed's character devices, one per GPU index."""
    if not layout.gpus_per_node:
        return "# no GPUs on this testbed\n"
    last = layout.gpus_per_node - 1
    files = f"{layout.dev_dir}/nvidia[0-{last}]" if last else f"{layout.dev_dir}/nvidia0"
    return f"NodeName={','.join(layout.node_names)} Name=gpu File={files}\n"
