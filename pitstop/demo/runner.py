"""`pitstop demo`: a training run on the local testbed survives its faults, unattended.

It brings up a four-node testbed with an agent on every node, launches the tiny CPU
recipe on two nodes with one spare in its allocation, injects faults where real ones
enter (a kernel-log line, a job-log line, a rank that stops, a slurmd that dies), and
prints what happens as it happens: the finding, the fence, the step started again (on
the spare, or after a requeue when no spare is left), the resume from the newest
checkpoint, and the loss carrying on. Everything it reports it reads from where a user
would: Slurm, the agents' event logs and the run directory. The demo plays the one role
a person plays on a real cluster: it "replaces" a node pitstop drained or set DOWN
(resumes it) once the job runs elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pitstop.demo.timeline import Attempt, FaultInjected, StepSeen, Summary, format_summary, summarize
from pitstop.fsutil import write_json_atomic
from pitstop.recipes.warm import training_ranks
from pitstop.rundir import ATTEMPT_LINE, iter_progress, list_checkpoints, read_attempts
from pitstop.slurm import Slurm, SlurmError
from pitstop.testbed.cluster import Testbed
from pitstop.testbed.config import free_port_block

RECIPE = "llama3-tiny-seq256-cpu-pretrain"
FAULT_KINDS = ["xid79", "xid48", "nccl", "stall", "slurmd"]
# A fresh machine's first start (cold page cache) takes 20 s and more to its first step.
AGENT_ARGS = ["--stall-floor", "5", "--stall-k", "6", "--stall-startup", "60"]
SPARE_NODES = 1  # the job holds a stand-in, so a fenced node costs a restart, not a requeue
# srun starts the ranks itself: a restart saves torchrun's own start and rendezvous.
# An agent stamps a decision with the start of the tick that read the line, which under
# load can be a little before the fault was stamped here (the testbed runs --interval 2).
TICK_S = 2.5
MISSED_AFTER_S = 120.0


class DemoError(RuntimeError):
    pass


def default_procs_per_node(job_nodes: int = 2) -> int:
    """Ranks per node so the job's ranks fit this machine's cores (the testbed's nodes all
    share them): one rank per core, at most the recipe's two. More ranks than cores only
    make every start import torch in turn, which a restart then pays again."""
    return max(1, min(2, (os.cpu_count() or 1) // job_nodes))


def threads_per_rank(procs_per_node: int, job_nodes: int = 2) -> int:
    """Intra-op threads a rank (OMP_NUM_THREADS) so the job's threads fit this machine's
    cores: each testbed node claims every core of the host, and torch would run as many
    threads in every rank (two ranks of two threads spun on two cores: steps and
    checkpoint loads ran 2-3x slower)."""
    return max(1, (os.cpu_count() or 1) // max(1, job_nodes * procs_per_node))


@dataclass
class DemoOptions:
    directory: Path = Path("/tmp/pitstop-demo")
    nodes: int = 4
    gpus_per_node: int = 2
    steps: int = 60
    fault_after_step: int = 15
    faults: int = 1
    every_s: float = 60.0
    overrides: list[str] = field(default_factory=list)
    timeout_s: float = 1800.0
    keep: bool = False
    duration_s: float | None = None  # end the measurement after this long (the job is cancelled)
    kinds: list[str] = field(default_factory=lambda: list(FAULT_KINDS))  # a campaign's faults, in turn
    procs_per_node: int = field(default_factory=lambda: default_procs_per_node())


class Demo:
    def __init__(self, options: DemoOptions, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say_raw = say
        self.testbed = Testbed(options.directory)
        self.t0 = time.time()
        self.steps: list[StepSeen] = []
        self._seen_steps: set[tuple[int, int]] = set()
        self.faults: list[FaultInjected] = []
        self.attempts: list[Attempt] = []
        self.fenced_nodes: list[str] = []
        self._event_offsets: dict[str, int] = {}
        self._node_reasons: dict[str, str] = {}
        self._checkpoints: set[int] = set()
        self._stopped_slurmd: str | None = None
        self._attempt_at_stop = 0
        self._slurm_restarts = 0
        self._stopped_ranks: list[int] = []
        self._rebooted: set[str] = set()  # nodes the agent rebooted: it returns them itself
        self._reboot_expected: set[str] = set()  # XID 79 injected: the agent will reboot them
        # Nodes whose agent has logged its fence (it logs once every action of it is done):
        # the operator replaces a node only then, not while the agent still ends its steps.
        self._fence_logged: set[str] = set()
        self.job_id = ""
        self.final_state = ""  # the job's state when the watch ended
        self.run_dir = Path()
        self.slurm: Slurm | None = None
        self.cancelled = threading.Event()  # set from another thread (the TUI closing) to stop

    def say(self, text: str) -> None:
        self.say_raw(f"[{time.time() - self.t0:7.1f}s] {text}")

    # --- the story ----------------------------------------------------------------------

    def run(self) -> Summary:
        self.start()
        return self.story()

    def start(self) -> None:
        """The stage: the testbed and an agent on every node, ready."""
        opts = self.options
        layout = self.testbed.up(nodes=opts.nodes, gpus_per_node=opts.gpus_per_node, agents=True,
                                 agent_args=AGENT_ARGS, timeout=60)
        self.slurm = self.testbed.slurm()
        self.say(f"testbed up: {layout.nodes} nodes ({', '.join(layout.node_names)}), "
                 f"{layout.gpus_per_node} GPUs each, an agent on every node ({layout.dir})")
        self._wait_agents()

    def story(self) -> Summary:
        """The run, its faults and its recovery, watched to the end; the summary."""
        self._launch()
        summary = self._watch()
        write_json_atomic(self.options.directory / "demo-summary.json",
                          {"summary": summary.to_dict(), "job_id": self.job_id, "run_dir": str(self.run_dir),
                           "faults": [f.__dict__ for f in self.faults],
                           "attempts": [a.__dict__ for a in self.attempts]}, indent=2)
        return summary

    def _wait_agents(self) -> None:
        layout = self.testbed.layout
        deadline = time.time() + 30
        while time.time() < deadline:
            if all((layout.agent_state_dir(n) / f"{n}.json").exists() for n in layout.node_names):
                return
            time.sleep(0.2)
        last_lines = []
        for node in layout.node_names:
            log = layout.log_dir / f"agent-{node}.log"
            lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            if lines:
                last_lines.append(f"  {log}: {lines[-1]}")
        raise DemoError("the agents did not start; see the agent logs in " + str(layout.log_dir)
                        + ("\n" + "\n".join(last_lines) if last_lines else ""))

    def _launch(self) -> None:
        layout = self.testbed.layout
        args = [sys.executable, "-m", "pitstop", "recipes", "launch", RECIPE, "cluster.nodes=2",
                f"cluster.spare_nodes={SPARE_NODES}", "cluster.launcher=srun", "cluster.warm_start=true",
                f"cluster.procs_per_node={self.options.procs_per_node}", f"trainer.max_steps={self.options.steps}",
                f"run.root={layout.jobs_dir / 'runs'}",
                f"cluster.rdzv_port={free_port_block(1)}", *self.options.overrides, "--json"]
        # The job's environment (sbatch passes it on to the ranks): a thread count of the
        # caller's own stands.
        threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")
                   or str(threads_per_rank(self.options.procs_per_node))}
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **layout.env(), **threads}, cwd=layout.jobs_dir)
        if proc.returncode != 0:
            raise DemoError(f"launching {RECIPE} failed:\n{proc.stderr.strip()}")
        result = json.loads(proc.stdout)
        self.job_id, self.run_dir = result["job_id"], Path(result["run_dir"])
        self.say(f"launched {RECIPE} on 2 nodes, {self.options.procs_per_node} rank(s) each, and "
                 f"{SPARE_NODES} spare, as job {self.job_id}; run dir {self.run_dir}")

    # --- watching -----------------------------------------------------------------------

    def _watch(self) -> Summary:
        assert self.slurm is not None
        deadline = time.time() + self.options.timeout_s
        first_start: float | None = None
        last_state = ""
        held: set[str] = set()  # the running job's nodes, as last seen
        next_fault_at: float | None = None
        while time.time() < deadline:
            if self.cancelled.is_set():
                raise DemoError("the demo was stopped before the run ended")
            now = time.time()
            job = self._job()
            if job is None:
                raise DemoError(f"Slurm no longer knows job {self.job_id}")
            self._track_attempts(job, now)
            if job.running and first_start is None:
                first_start = job.start_time or now
            if job.state != last_state:
                where = f" on {','.join(job.nodes)}" if job.running else ""
                self.say(f"job {self.job_id} {job.state.lower()}{where}"
                         + (f" (restart {job.restart_count})" if job.restart_count else ""))
                last_state = job.state
            elif job.running and held and set(job.nodes) != held:
                gone, new = sorted(held - set(job.nodes)), sorted(set(job.nodes) - held)
                if gone:
                    self.say(f"job {self.job_id} gave back {', '.join(gone)}")
                if new:
                    self.say(f"job {self.job_id} grew by {', '.join(new)}: a spare again")
            held = set(job.nodes) if job.running else set()
            self._read_progress()
            self._read_checkpoints()
            self._read_agent_events()
            self._read_nodes(job)
            self._repair(job)
            if job.finished:
                break
            if self.options.duration_s and first_start and now - first_start >= self.options.duration_s:
                self.say(f"{self.options.duration_s:.0f}s of training measured; cancelling job {self.job_id}")
                self.slurm.cancel(self.job_id)
                job.end_time = now
                break
            if len(self.faults) < self.options.faults and job.running:
                if not self.faults:
                    if self._latest_step() >= self.options.fault_after_step:
                        self._inject(job, 0)
                        next_fault_at = time.time() + self.options.every_s
                elif next_fault_at is not None and now >= next_fault_at and not self._fault_open() \
                        and self._trains_again(self._current_attempt()):
                    self._inject(job, len(self.faults))
                    next_fault_at = time.time() + self.options.every_s
            time.sleep(0.25)
        else:
            raise DemoError(f"the run did not finish within {self.options.timeout_s:.0f}s")
        finished = job.end_time or time.time()
        self.final_state = job.state
        if job.finished and job.state != "COMPLETED":  # not a run cut at --duration
            self.say(f"job {self.job_id} ended {job.state}; see {self.run_dir}")
        summary = summarize(self.steps, self.faults, self.attempts, first_start or self.t0, finished,
                            self.fenced_nodes)
        self.say_raw(format_summary(summary))
        return summary

    def _job(self):
        assert self.slurm is not None
        try:
            return self.slurm.job(self.job_id)
        except SlurmError as exc:
            self.say(f"slurm: {exc}")
            return None

    def _track_attempts(self, job, now: float) -> None:
        """Each start of the training step, from the batch script's own records
        (`attempts.jsonl`): a restart in the allocation and a requeue alike. A requeue
        that Slurm made before the script could say the step ended ends it here."""
        if job.restart_count != self._slurm_restarts:
            self._slurm_restarts = job.restart_count
            if self.attempts and self.attempts[-1].requeued_at is None:
                self.attempts[-1].requeued_at = now
        known = {a.number: a for a in self.attempts}
        for record in read_attempts(self.run_dir):
            number = int(record.get("attempt", 0))
            at = float(record.get("time", now))
            if record.get("event") == "start" and number not in known:
                if self.attempts and self.attempts[-1].requeued_at is None:
                    self.attempts[-1].requeued_at = at
                nodes = [n for n in str(record.get("nodes", "")).split(",") if n]
                attempt = Attempt(number=number, started_at=at, nodes=nodes,
                                  restart_count=int(record.get("restart_count", 0)))
                before = known.get(number - 1)
                known[number] = attempt
                self.attempts.append(attempt)
                if number:
                    requeued = before is not None and attempt.restart_count != before.restart_count
                    how = "after a requeue" if requeued else "in its allocation"
                    self.say(f"restart {number}: the step starts again {how} on {', '.join(nodes)}")
            elif record.get("event") == "end" and number in known and known[number].requeued_at is None:
                known[number].requeued_at = at

    def _current_attempt(self) -> int:
        return self.attempts[-1].number if self.attempts else 0

    def _step_nodes(self, job) -> list[str]:
        """The nodes the training step runs on now (the job may hold a spare besides)."""
        if self.attempts and self.attempts[-1].nodes and self.attempts[-1].requeued_at is None:
            return self.attempts[-1].nodes
        return list(job.nodes)

    def _trains_again(self, attempt: int) -> bool:
        """A campaign's next fault waits until the run trains again after the last one: a
        few steps in an attempt that started after that fault."""
        current = next((a for a in self.attempts if a.number == attempt), None)
        if current is None or current.started_at is None or (self.faults and current.started_at < self.faults[-1].at):
            return False
        return sum(1 for s in self.steps if s.attempt == attempt) >= 3

    def _latest_step(self) -> int:
        return max((s.step for s in self.steps), default=0)

    def _read_progress(self) -> None:
        for record in iter_progress(self.run_dir):
            key = (int(record.get("step", 0)), int(record.get("attempt", record.get("restart_count", 0))))
            if key in self._seen_steps:
                continue
            self._seen_steps.add(key)
            seen = StepSeen(step=key[0], attempt=key[1], loss=float(record.get("loss", 0.0)),
                            step_time=float(record.get("step_time", 0.0)),
                            ended_at=float(record.get("time", time.time())))
            self.steps.append(seen)
            earlier = [s for s in self.steps if s.step == seen.step and s.attempt < seen.attempt]
            if earlier:
                self.say(f"step {seen.step} loss {seen.loss:.4f} after the restart "
                         f"(before it: {earlier[-1].loss:.4f})")
            elif seen.step % 10 == 0 or seen.step == 1:
                self.say(f"step {seen.step} loss {seen.loss:.4f} ({record.get('tokens_per_s', 0):.0f} tokens/s)")

    def _read_checkpoints(self) -> None:
        try:
            checkpoints = list_checkpoints(self.run_dir)
        except FileNotFoundError:  # one pruned while it was listed: the next poll sees the rest
            checkpoints = []
        for ckpt in checkpoints:
            if ckpt.complete and ckpt.step not in self._checkpoints:
                self._checkpoints.add(ckpt.step)
                self.say(f"checkpoint step {ckpt.step} complete ({ckpt.size_bytes / 1e6:.1f} MB)")
        out = self.run_dir / f"slurm-{self.job_id}.out"
        if out.exists():
            for attempt in self.attempts:
                if attempt.number and not attempt.resumed_from:
                    step, load_s = _resumed_step(out, attempt.number)
                    if step:
                        attempt.resumed_from, attempt.load_s = step, load_s
                        self.say(f"restart {attempt.number} resumed from checkpoint step {step} "
                                 f"(loaded in {load_s:.1f}s)")

    def _read_agent_events(self) -> None:
        layout = self.testbed.layout
        for node in layout.node_names:
            path = layout.agent_state_dir(node) / f"{node}.events.jsonl"
            offset = self._event_offsets.get(node, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except FileNotFoundError:
                continue
            complete = data.rfind(b"\n") + 1  # a line still being written waits for next time
            self._event_offsets[node] = offset + complete
            for line in data[:complete].decode("utf-8", "replace").splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self._agent_event(node, event)

    def _agent_event(self, node: str, event: dict) -> None:
        kind = event.get("kind")
        if kind == "decision":
            finding = event.get("finding", {})
            what = " ".join(p for p in (finding.get("signal"), finding.get("code"), finding.get("device")) if p)
            self.say(f"{node} agent: {what} -> {event.get('action_class')}"
                     + (" (already handled)" if event.get("duplicate") else ""))
            self._detected(node, finding.get("signal", ""), float(event.get("time", time.time())), "agent")
        elif kind == "action":
            if event.get("action") == "reboot" and event.get("ok", True):
                self._rebooted.add(node)
                self._reboot_expected.discard(node)
            if event.get("action") in ("drain", "down", "fail") and event.get("ok", True):
                self._fence_logged.add(node)
            detail = event.get("reason") or event.get("detail") or ""
            job = f" job {event['job_id']}" if event.get("job_id") else ""
            status = "" if event.get("ok", True) else " (not done)"
            self.say(f"{node} agent: {event.get('action')}{job}{status} {detail}".rstrip())

    def _detected(self, node: str, signal_name: str, at: float, by: str) -> None:
        expected = {"xid79": {"xid", "gpu_fallen_off_bus"}, "xid48": {"xid"}, "nccl": {"collective_timeout"},
                    "stall": {"step_stall", "collective_timeout"}, "slurmd": {"slurmd_down", "node_down"}}
        # A finding belongs to the latest matching fault injected before it; of the agents
        # that noticed one fault (a timeout shows on every rank), the earliest counts.
        matching = [f for f in self.faults if at >= f.at - TICK_S and signal_name in expected[f.kind]
                    and (f.node == node or f.kind in {"nccl", "stall"})]
        if matching:
            fault = max(matching, key=lambda f: f.at)
            at = max(at, fault.at)  # noticed no earlier than it happened
            if fault.detected_at is None or at < fault.detected_at:
                fault.detected_at, fault.detected_by = at, by

    def _read_nodes(self, job) -> None:
        assert self.slurm is not None
        for node in self.slurm.nodes():
            before = self._node_reasons.get(node.name, "")
            if node.reason != before:
                if node.fenced_by_pitstop:
                    self.say(f"{node.name} {node.state_label} in Slurm: \"{node.reason}\"")
                    if node.name not in self.fenced_nodes:
                        self.fenced_nodes.append(node.name)
                elif not node.reason:
                    self.say(f"{node.name} back in service ({node.state_label})")
                self._node_reasons[node.name] = node.reason
            if self._stopped_slurmd == node.name and ("NOT_RESPONDING" in node.flags or node.down):
                self._detected(node.name, "node_down", time.time(), "slurm")

    def _repair(self, job) -> None:
        """Play the operator: a drained, failed or DOWN node is replaced once the job runs
        elsewhere, a stopped slurmd is started again once Slurm has moved the job. A node
        the agent rebooted is left to the agent, which returns it after its checks pass."""
        assert self.slurm is not None
        if self._stopped_slurmd and (self._current_attempt() > self._attempt_at_stop or job.finished):
            self.testbed.inject(self._stopped_slurmd, "slurmd-start")
            self.say(f"{self._stopped_slurmd}: slurmd started again (the node is repaired)")
            self._stopped_slurmd = None
        if not job.running:
            return
        for node in self.slurm.nodes():
            if not node.fenced_by_pitstop:
                self._rebooted.discard(node.name)  # back in service: a later fault starts afresh
            elif (node.drained or node.failed or node.down) and node.name not in job.nodes \
                    and node.name not in self._rebooted | self._reboot_expected \
                    and node.name != self._stopped_slurmd and node.name in self._fence_logged:
                self._fence_logged.discard(node.name)
                self.slurm.resume(node.name)
                self.say(f"{node.name} replaced with a healthy node (resumed by the operator)")

    def _fault_open(self) -> bool:
        """A fault not yet noticed holds the next one back, for up to MISSED_AFTER_S: after
        that it counts as missed (the summary says so) and the campaign goes on."""
        waiting = [f for f in self.faults if f.detected_at is None and time.time() - f.at < MISSED_AFTER_S]
        return bool(waiting) or self._stopped_slurmd is not None

    # --- faults -------------------------------------------------------------------------

    def _inject(self, job, index: int) -> None:
        kind = self.options.kinds[index % len(self.options.kinds)]
        target = self._step_nodes(job)[-1]
        now = time.time()
        if kind == "xid79":
            self._reboot_expected.add(target)  # the agent reboots it and returns it itself: no operator
            detail = self.testbed.inject(target, "xid:79:1")
            text = "XID 79 on GPU 1 (fallen off the bus)"
        elif kind == "xid48":
            detail = self.testbed.inject(target, "xid:48:0")
            text = "XID 48 on GPU 0 (double-bit ECC error)"
        elif kind == "nccl":
            detail = self.testbed.inject(target, "nccl-timeout")
            text = "an NCCL watchdog timeout in the job's log"
        elif kind == "stall":
            ranks = training_ranks(self.run_dir, self.job_id)
            if not ranks:
                raise DemoError("no training rank to stop")
            os.kill(ranks[-1], signal.SIGSTOP)
            self._stopped_ranks.append(ranks[-1])
            detail, text = f"SIGSTOP to pid {ranks[-1]}", "a rank that stops making progress"
        else:
            self._attempt_at_stop = self._current_attempt()
            detail = self.testbed.inject(target, "slurmd-stop")
            self._stopped_slurmd = target
            text = "its slurmd dies"
        self.faults.append(FaultInjected(kind=kind, node=target, at=now, detail=detail))
        self.say(f"FAULT {len(self.faults)}: {target}: {text}")

    def close(self) -> None:
        for pid in self._stopped_ranks:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if not self.options.keep:
            self.testbed.down()


def _resumed_step(out: Path, attempt: int) -> tuple[int, float]:
    """The checkpoint step restart `attempt` loaded and the seconds the load took, from
    the runtime's own start line (`training from step N …, checkpoint load S s`) after the
    batch script's line for that attempt."""
    try:
        text = out.read_text(errors="replace")
    except OSError:
        return 0, 0.0
    current = None
    for line in text.splitlines():
        started = ATTEMPT_LINE.match(line)
        if started is not None:
            current = int(started.group(1))
        elif current == attempt and "training from step" in line:
            match = re.search(r"training from step (\d+)", line)
            load = re.search(r"checkpoint load ([0-9.]+) s", line)
            return (int(match.group(1)) if match else 0), (float(load.group(1)) if load else 0.0)
    return 0, 0.0
