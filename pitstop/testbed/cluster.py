"""A real Slurm cluster on one machine: munged, slurmctld and N slurmd under one directory.

`up` is idempotent (a running testbed is checked and mended, not restarted), `down`
stops exactly the processes this testbed started (found through their pid files and
checked against their command lines) and any slurmstepd that still writes into its
directory. Facts behind the settings are in shared/slurm-testbed.md.
"""

from __future__ import annotations

import contextlib

import logging
import os
import shutil
import subprocess
import sys
import signal
import time
import uuid
from typing import Sequence
from pathlib import Path

import psutil

from pitstop.slurm import Slurm, SlurmError
from pitstop.testbed import accounting, faults
from pitstop.testbed.config import (DEFAULT_DIR, LENIENT_THRESHOLDS, Layout, free_port_block,
                                    render_gres_conf, render_hooks_config, render_slurm_conf)
from pitstop.fsutil import write_atomic
from pitstop.testbed import procs
from pitstop.testbed.procs import TestbedError, ensure_packages

log = logging.getLogger(__name__)

DEBIAN_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
SSH_PACKAGES = ["openssh-server", "openssh-client"]
BINARIES = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd",
            "munged": "/usr/sbin/munged", "sinfo": "/usr/bin/sinfo"}


class Testbed:
    """One testbed directory and the processes that serve it."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path | str = DEFAULT_DIR) -> None:
        self.dir = Path(directory).resolve()

    # --- what exists --------------------------------------------------------------------

    @property
    def layout(self) -> Layout:
        layout = Layout.load(self.dir)
        if layout is None:
            raise TestbedError(f"no testbed at {self.dir}: run `pitstop testbed up --dir {self.dir}`")
        return layout

    def exists(self) -> bool:
        return Layout.load(self.dir) is not None

    def slurm(self, **kwargs) -> Slurm:
        """A Slurm client pointed at this testbed."""
        return Slurm(env=self.layout.env(), **kwargs)

    # --- up ---------------------------------------------------------------------------

    def up(self, nodes: int = 3, gpus_per_node: int = 0, ssh: bool = False,
           timeout: float = 30.0, cpus_per_node: int = 2, agents: bool = False,
           agent_args: list[str] | None = None) -> Layout:
        if os.geteuid() != 0:
            raise TestbedError("the testbed runs slurmctld, slurmd and munged as root: run as root")
        ensure_packages(DEBIAN_PACKAGES + accounting.PACKAGES,
                        list(BINARIES.values()) + list(accounting.BINARIES.values()))
        layout = Layout.load(self.dir)
        if layout is not None:
            if (layout.nodes, layout.gpus_per_node) != (nodes, gpus_per_node) and self._any_running(layout):
                raise TestbedError(
                    f"the testbed at {self.dir} runs {layout.nodes} nodes with "
                    f"{layout.gpus_per_node} GPUs each; run `pitstop testbed down --dir {self.dir}` "
                    "first to change its shape")
            if not self._any_running(layout):
                layout = None
        if layout is None:
            layout = self._create(nodes, gpus_per_node, cpus_per_node)
        self._start_missing(layout)
        if ssh:
            from pitstop.testbed.sshd import start_sshd
            start_sshd(layout)
        self.wait_idle(layout, timeout)
        if agents:
            self.start_agents(layout, agent_args or [])
        return layout

    # --- agents -----------------------------------------------------------------------

    def agent_pid_file(self, layout: Layout, node: str) -> Path:
        return layout.run_dir / f"agent-{node}.pid"

    def agent_args(self, layout: Layout, node: str, port: int) -> list[str]:
        """`pitstop agent run` for one testbed node: its kernel-log file, boot id, GPUs."""
        args = [sys.executable, "-m", "pitstop", "agent", "run", "--config", "/dev/null",
                "--node", node, "--kmsg", str(layout.kmsg_file(node)),
                "--boot-id-file", str(self.boot_id_file(layout, node)),
                "--state-dir", str(layout.agent_state_dir(node)), "--port", str(port),
                "--jobs-interval", "1", "--interval", "2", "--nvml", "off", "--neuron", "off",
                "--return-check-config", str(layout.hooks_config),
                # The node's own slurmd, watched for its death; a short grace keeps the
                # testbed's detection quick (slurmd restarts there take well under a second).
                "--slurmd-pidfile", str(layout.slurmd_pid(node)), "--slurmd-grace", "2"]
        if layout.gpus_per_node:
            args += ["--expected-gpus", str(layout.gpus_per_node),
                     "--accelerator-glob", str(layout.dev_dir / "nvidia[0-9]*")]
            for bus in faults.GPU_BUS_IDS[:layout.gpus_per_node]:
                args += ["--gpu-bus-id", bus]
        return args

    def start_agents(self, layout: Layout, extra: list[str]) -> None:
        """One agent process per node, each with its own state directory and port."""
        if not layout.agent_ports or len(layout.agent_ports) != layout.nodes:
            base = free_port_block(layout.nodes)
            layout.agent_ports = [base + i for i in range(layout.nodes)]
        layout.agents = True
        layout.save()
        for node, port in zip(layout.node_names, layout.agent_ports):
            self.start_agent(layout, node, port, extra)

    def start_agent(self, layout: Layout, node: str, port: int | None = None,
                    extra: list[str] = ()) -> int:
        pid_file = self.agent_pid_file(layout, node)
        running = procs.alive(pid_file, "pitstop")
        if running:
            return running
        if port is None:
            port = layout.agent_ports[layout.node_names.index(node)]
        layout.agent_state_dir(node).mkdir(parents=True, exist_ok=True)
        log_file = open(layout.log_dir / f"agent-{node}.log", "ab")
        env = dict(os.environ, **layout.env(), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([*self.agent_args(layout, node, port), *extra], stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=layout.dir)
        log_file.close()
        write_atomic(pid_file, f"{proc.pid}\n")
        return proc.pid

    @contextlib.contextmanager
    def agents_running(self, args: Sequence[str] = ()):
        """An agent on every node, on fresh kernel logs, each having written its state;
        afterwards stopped, their state removed and their fences lifted, so what runs next
        sees a quiet cluster (tests that inject faults with no agent watching)."""
        from pitstop.waiting import wait_until

        layout = self.layout
        shutil.rmtree(layout.agent_root, ignore_errors=True)
        for node in layout.node_names:
            self.new_boot(layout, node)
        self.start_agents(layout, list(args))
        try:
            for node in layout.node_names:
                wait_until(lambda n=node: (layout.agent_state_dir(n) / f"{n}.json").exists(), 20,
                           what=f"the agent on {node} to write its state")
            yield self
        finally:
            for node in layout.node_names:
                self.stop_agent(layout, node)
            layout.agents = False
            layout.save()
            shutil.rmtree(layout.agent_root, ignore_errors=True)
            slurm = self.slurm()
            fenced = [n.name for n in slurm.nodes() if n.drained or n.failed or n.down]
            if fenced:
                slurm.resume(fenced)

    def stop_agent(self, layout: Layout, node: str, sig: int = signal.SIGTERM) -> None:
        pid = procs.alive(self.agent_pid_file(layout, node), "pitstop")
        if not pid:
            return
        os.kill(pid, sig)
        procs.wait(lambda: not psutil.pid_exists(pid) or procs.zombie(pid), 15, f"agent on {node} to stop")
        self.agent_pid_file(layout, node).unlink(missing_ok=True)

    def _create(self, nodes: int, gpus_per_node: int, cpus_per_node: int) -> Layout:
        if nodes < 1:
            raise TestbedError("a testbed needs at least one node")
        if gpus_per_node > len(faults.GPU_BUS_IDS):
            raise TestbedError(f"at most {len(faults.GPU_BUS_IDS)} GPUs per node")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # munged runs as its own user and must reach its socket dir
        for sub in ("state", "spool", "run", "log", "munge", "etc", "kmsg", "dev", "jobs", "db"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        base = free_port_block(nodes + 3)
        layout = Layout(dir=self.dir, nodes=nodes, gpus_per_node=gpus_per_node,
                        cpus_per_node=cpus_per_node, ctld_port=base,
                        node_ports=[base + 1 + i for i in range(nodes)],
                        db_port=base + nodes + 1, dbd_port=base + nodes + 2)
        for sub in ("state", "run", "log", "etc", "kmsg", "dev", "jobs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "jobs").chmod(0o1777)
        for name in layout.node_names:
            (self.dir / "spool" / name).mkdir(parents=True, exist_ok=True)
        write_atomic(layout.slurm_conf, render_slurm_conf(layout))
        write_atomic(layout.gres_conf, render_gres_conf(layout))
        write_atomic(layout.thresholds_file, LENIENT_THRESHOLDS)
        write_atomic(layout.hooks_config, render_hooks_config(layout))
        for index in range(gpus_per_node):
            os.mknod(layout.dev_dir / f"nvidia{index}", 0o666 | 0o020000, os.makedev(195, index))
        self._make_munge_key(layout)
        accounting.create(layout)
        self._write_reboot_program(layout)
        for name in layout.node_names:
            self.new_boot(layout, name)
        layout.save()
        return layout

    def _make_munge_key(self, layout: Layout) -> None:
        munge = procs.user_ids("munge")
        key_dir = layout.munge_dir / "key"
        key_dir.mkdir(parents=True, exist_ok=True)
        layout.munge_dir.chmod(0o755)
        key_dir.chmod(0o700)
        key = key_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (layout.munge_dir, key_dir, key):
            os.chown(path, munge[0], munge[1])

    def _write_reboot_program(self, layout: Layout) -> None:
        """RebootProgram: this interpreter runs pitstop.testbed.reboot for this testbed."""
        layout.reboot_program.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(layout.reboot_program,
                     f"#!{sys.executable}\nimport sys\nfrom pitstop.testbed.reboot import main\n"
                     f"sys.argv = [sys.argv[0], {str(self.dir)!r}]\nsys.exit(main())\n", mode=0o755)

    def new_boot(self, layout: Layout, node: str) -> str:
        """Give a node a new boot: a fresh boot id and a kernel log that starts over,
        the way /dev/kmsg does after a reboot (the old log is kept as `<node>.prev`)."""
        boot_id = str(uuid.uuid4())
        write_atomic(self.boot_id_file(layout, node), boot_id + "\n")
        kmsg = layout.kmsg_file(node)
        if kmsg.exists():
            os.replace(kmsg, kmsg.with_name(f"{node}.prev"))
        faults.append_kernel_records(kmsg, faults.boot_messages(layout.gpus_per_node),
                                     priority=6, boot_time=time.time())
        return boot_id

    @staticmethod
    def boot_id_file(layout: Layout, node: str) -> Path:
        return layout.kmsg_dir / f"{node}.boot_id"

    def _start_missing(self, layout: Layout) -> None:
        if not procs.alive(layout.munge_pid, "munged"):
            self._start_munged(layout)
        accounting.start(layout)
        if not procs.alive(layout.ctld_pid, "slurmctld"):
            procs.run_daemon([BINARIES["slurmctld"], "-f", str(layout.slurm_conf), "-i"], "slurmctld")
            procs.wait(lambda: procs.alive(layout.ctld_pid, "slurmctld"), 10, "slurmctld to start",
                  layout.log_dir / "slurmctld.log")
        for name in layout.node_names:
            if not procs.alive(layout.slurmd_pid(name), "slurmd"):
                self.start_slurmd(layout, name)

    def _start_munged(self, layout: Layout) -> None:
        socket_path = layout.munge_socket
        for stale in (socket_path, Path(f"{socket_path}.lock")):
            stale.unlink(missing_ok=True)
        procs.run_daemon(["runuser", "-u", "munge", "--", BINARIES["munged"], "--force",
                     f"--socket={socket_path}", f"--key-file={layout.munge_dir / 'key' / 'munge.key'}",
                     f"--pid-file={layout.munge_pid}", f"--log-file={layout.munge_dir / 'munged.log'}",
                     f"--seed-file={layout.munge_dir / 'munged.seed'}"], "munged")
        procs.wait(lambda: socket_path.exists() and procs.alive(layout.munge_pid, "munged"), 10,
              "munged to start", layout.munge_dir / "munged.log")

    def start_slurmd(self, layout: Layout, node: str, reboot: bool = False) -> None:
        """Start one node's slurmd; `reboot` reports a finished reboot to slurmctld (-b)."""
        args = [BINARIES["slurmd"], "-f", str(layout.slurm_conf), "-N", node]
        if reboot:
            args.append("-b")
        procs.run_daemon(args, f"slurmd {node}")
        procs.wait(lambda: procs.alive(layout.slurmd_pid(node), "slurmd"), 10, f"slurmd {node} to start",
              layout.log_dir / f"slurmd-{node}.log")

    def stop_slurmd(self, layout: Layout, node: str, sig: int = signal.SIGKILL) -> None:
        pid = procs.alive(layout.slurmd_pid(node), "slurmd")
        if not pid:
            return
        os.kill(pid, sig)
        procs.wait(lambda: not psutil.pid_exists(pid) or procs.zombie(pid), 10, f"slurmd {node} to stop")
        layout.slurmd_pid(node).unlink(missing_ok=True)

    def reboot_node(self, node: str) -> None:
        """Finish a Slurm-requested reboot the way a real node would: slurmd goes away,
        the node boots with a new boot id and a fresh kernel log, slurmd starts with -b."""
        layout = self.layout
        if not procs.alive(layout.ctld_pid, "slurmctld"):
            return  # the testbed went down while the node "rebooted": nothing to come back to
        self.stop_slurmd(layout, node, signal.SIGTERM)
        self.new_boot(layout, node)
        self.start_slurmd(layout, node, reboot=True)

    def wait_idle(self, layout: Layout, timeout: float = 30.0) -> None:
        client = Slurm(env=layout.env())
        expected = set(layout.node_names)

        def all_idle(slurm: Slurm) -> bool:
            nodes = {n.name: n for n in slurm.nodes()}
            return expected <= set(nodes) and all(
                nodes[n].state in {"IDLE", "MIXED", "ALLOCATED"} and "NOT_RESPONDING" not in nodes[n].flags
                and not nodes[n].drained for n in expected)

        try:
            client.wait_for(all_idle, timeout, what=f"{len(expected)} testbed nodes to be idle")
        except TimeoutError as exc:
            logs = layout.log_dir / "slurmctld.log"
            raise TestbedError(f"{exc}; see {logs}") from None

    # --- down -------------------------------------------------------------------------

    def down(self, timeout: float = 15.0) -> list[str]:
        """Stop everything this testbed started; returns what was stopped."""
        layout = Layout.load(self.dir)
        if layout is None:
            return []
        stopped: list[str] = []
        if procs.alive(layout.ctld_pid, "slurmctld"):
            self._cancel_all(layout)
        from pitstop.testbed.sshd import stop_sshd
        stopped += stop_sshd(layout)
        for path, name in self._agent_pids(layout):
            stopped += procs.stop(path, name, timeout)
        # slurmctld goes first: with it gone no slurmd is asked to reboot again, and a node
        # "rebooting" (the RebootProgram's worker, asleep) finds nothing to come back to.
        # That worker goes next (again until none is left: it daemonizes by forking twice,
        # and one pass can miss the grandchild), then every slurmd of this config, even
        # one whose pid file a reboot replaced (one such kept a later testbed's port).
        stopped += procs.stop(layout.ctld_pid, "slurmctld", timeout)
        stopped += self._stop_matching(timeout, lambda cmd: str(layout.reboot_program) in cmd, until_none=True)
        for node in layout.node_names:
            stopped += procs.stop(layout.slurmd_pid(node), "slurmd", timeout)
        stopped += self._stop_matching(timeout, lambda cmd: bool(cmd) and Path(cmd[0]).name == "slurmd"
                                       and str(layout.slurm_conf) in cmd)
        stopped += accounting.stop(layout, timeout)
        stopped += self._stop_stepds(layout, timeout)
        stopped += procs.stop(layout.munge_pid, "munged", timeout)
        return stopped

    def _agent_pids(self, layout: Layout) -> list[tuple[Path, str]]:
        return [(p, "pitstop") for p in sorted(layout.run_dir.glob("agent-*.pid"))]

    def _cancel_all(self, layout: Layout) -> None:
        client = Slurm(env=layout.env(), timeout=10)
        try:
            active = [j for j in client.jobs() if not j.finished]
            for job in active:
                client.cancel(job.job_id)
            if active:
                client.wait_for(lambda s: not [j for j in s.jobs() if j.running or j.pending or j.state == "COMPLETING"],
                                10, what="jobs to end")
        except (SlurmError, TimeoutError) as exc:
            log.warning("could not cancel every job before stopping: %s", exc)

    def _stop_matching(self, timeout: float, matches, until_none: bool = False) -> list[str]:
        """Terminate the processes whose argument list `matches`: those of this testbed
        that no pid file names. With `until_none`, pass again until a pass finds none
        (for processes that fork while being looked for)."""
        stopped: list[str] = []
        for _ in range(10 if until_none else 1):
            found = []
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = proc.info.get("cmdline") or []
                if proc.pid == os.getpid() or not matches(cmd):
                    continue
                procs.terminate(proc.pid, timeout)
                found.append(f"{Path(cmd[0]).name}[{proc.pid}]")
            stopped += found
            if not found:
                break
        return stopped

    def _stop_stepds(self, layout: Layout, timeout: float) -> list[str]:
        """slurmstepd outlives slurmd; ours are the ones with a file open in our directory."""
        stopped = []
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if not (proc.info.get("name") == "slurmstepd" or cmdline.startswith("slurmstepd")):
                continue
            try:
                files = [f.path for f in proc.open_files()]
                cwd = proc.cwd()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if any(str(p).startswith(str(self.dir)) for p in [*files, cwd]):
                procs.terminate(proc.pid, timeout)
                stopped.append(f"slurmstepd[{proc.pid}]")
        return stopped

    def _any_running(self, layout: Layout) -> bool:
        return bool(procs.alive(layout.ctld_pid, "slurmctld") or procs.alive(layout.munge_pid, "munged")
                    or accounting.running(layout) or any(procs.alive(layout.slurmd_pid(n), "slurmd") for n in layout.node_names))

    # --- status -----------------------------------------------------------------------

    def status(self) -> dict:
        layout = Layout.load(self.dir)
        if layout is None:
            return {"dir": str(self.dir), "exists": False, "processes": {}, "nodes": []}
        processes = {"munged": procs.alive(layout.munge_pid, "munged"),
                     "mariadbd": procs.alive(layout.db_pid, "mariadbd"),
                     "slurmdbd": procs.alive(layout.dbd_pid, "slurmdbd"),
                     "slurmctld": procs.alive(layout.ctld_pid, "slurmctld")}
        for node in layout.node_names:
            processes[f"slurmd {node}"] = procs.alive(layout.slurmd_pid(node), "slurmd")
        if layout.agents:
            for node in layout.node_names:
                processes[f"agent {node}"] = procs.alive(self.agent_pid_file(layout, node), "pitstop")
        from pitstop.testbed.sshd import sshd_pid
        if layout.ssh_port:
            processes["sshd"] = sshd_pid(layout)
        nodes = []
        if processes["slurmctld"]:
            try:
                nodes = [n.to_dict() for n in Slurm(env=layout.env(), timeout=5).nodes()]
            except SlurmError as exc:
                nodes = [{"error": str(exc)}]
        return {"dir": str(self.dir), "exists": True, "slurm_conf": str(layout.slurm_conf),
                "nodes_configured": layout.nodes, "gpus_per_node": layout.gpus_per_node,
                "ctld_port": layout.ctld_port, "ssh_port": layout.ssh_port,
                "processes": {k: (v or None) for k, v in processes.items()}, "nodes": nodes}

    # --- faults -----------------------------------------------------------------------

    def inject(self, node: str, fault: str, count: int = 1, file: Path | None = None) -> str:
        """Inject one fault where the real one enters; returns what was done."""
        layout = self.layout
        if node not in layout.node_names:
            raise faults.FaultError(f"no node {node!r} in this testbed ({', '.join(layout.node_names)})")
        target = faults.target_of(fault)
        if count < 1:
            raise faults.FaultError("--count must be at least 1")
        if target == "kmsg":
            messages = faults.kernel_messages(fault, layout.gpus_per_node or 8)
            written = faults.append_kernel_records(layout.kmsg_file(node), messages, repeat=count)
            return f"{written} kernel record(s) appended to {layout.kmsg_file(node)}"
        if target == "slurmd":
            if fault == "slurmd-stop":
                self.stop_slurmd(layout, node)
                return f"slurmd on {node} stopped"
            self.start_slurmd(layout, node)
            return f"slurmd on {node} started"
        lines = faults.joblog_lines(fault) * count
        paths = [file] if file else self._job_outputs(layout, node)
        if not paths:
            raise faults.FaultError(f"no running job on {node} with an output file; pass --file")
        for path in paths:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
        return f"{len(lines)} line(s) appended to {', '.join(str(p) for p in paths)}"

    def _job_outputs(self, layout: Layout, node: str) -> list[Path]:
        snapshot = Slurm(env=layout.env()).snapshot()
        return [Path(j.stdout) for j in snapshot.jobs_on(node) if j.stdout]
