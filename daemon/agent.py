"""The node agent's loop: sources in, decisions through the policy, actions out.

One thread does the work, so the order of events is the order they are handled: the
kernel log (woken by its descriptor on a real node, polled every `kmsg_poll_s` when it is
a plain file), job logs and heartbeats of the jobs on this node, and telemetry on its own
interval. Every finding goes through `Policy.decide`; the decision is recorded in the
health store and saved *before* anything is done to Slurm, and the kernel-log cursor is
committed after, so an agent killed at any point neither acts twice (the history makes a
replayed line a duplicate) nor misses a line (the cursor was not yet moved past it).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitstop.daemon.actions import NodeActions, Outcome
from pitstop.daemon.config import AgentConfig
from pitstop.daemon.devices import device_rows
from pitstop.daemon.health import HealthStore
from pitstop.daemon.host import HostState, HostThresholds, findings_from_host, read_host
from pitstop.daemon.joblogs import JobLogWatcher
from pitstop.daemon.kmsg import KmsgFollower, KmsgSource
from pitstop.daemon.metrics import Metrics
from pitstop.daemon.patterns import GpuMap, normalize_bus_id
from pitstop.daemon.policy import History, Policy
from pitstop.daemon.progress import ProgressWatcher
from pitstop.daemon import sdnotify
from pitstop.daemon.returncheck import CheckResult, ReturnCheck, check_command, interpret, last_line
from pitstop.daemon.slurmd import SlurmdWatch
from pitstop.model import FENCE_CLASSES, REPLACE_REASON, Finding, Health
from pitstop.rundir import HEARTBEAT, current_attempt, restarts_in_allocation
from pitstop.slurm import Slurm, SlurmError

log = logging.getLogger("pitstop.agent")

FINDING_MAX_AGE_S = 3600.0


@dataclass
class Timer:
    interval: float
    due: float = 0.0

    def ready(self, now: float) -> bool:
        if now >= self.due:
            self.due = now + self.interval
            return True
        return False


@dataclass
class AgentStatus:
    started_at: float = field(default_factory=time.time)
    loops: int = 0
    findings: int = 0
    last_error: str = ""
    breaker_open: bool = False


class Agent:
    """The agent for one node. `run()` until `stop()` (or SIGTERM)."""

    def __init__(self, config: AgentConfig, slurm: Slurm | None = None) -> None:
        self.config = config
        self.node = config.resolved_node()
        self.slurm = slurm or Slurm(timeout=config.slurm_timeout_s)
        self.policy = Policy.load(config.policy)
        self.store = HealthStore.open(config.state_dir, self.node)
        self.history = History.from_dict(self.store.state.history)
        self.actions = NodeActions(self.slurm, self.node, dry_run=config.dry_run,
                                   max_fenced_share=config.max_fenced_share,
                                   breaker_window_s=config.breaker_window_s,
                                   replace_command=config.replace_command,
                                   restarts_in_allocation=_restarts_in_allocation)
        self.gpus = GpuMap(bus_index={bus: i for i, bus in enumerate(config.gpu_bus_ids)})
        self.kmsg = KmsgSource(self.node, KmsgFollower(
            config.kmsg, cursor_path=Path(config.state_dir) / f"{self.node}.kmsg-cursor.json",
            boot_id_path=config.boot_id_file), gpus=self.gpus)
        self.joblogs = JobLogWatcher(self.node)
        self.progress = ProgressWatcher(self.node, k=config.stall_k, floor_s=config.stall_floor_s,
                                        startup_s=config.stall_startup_s)
        self.slurmd = (SlurmdWatch(config.slurmd_pidfile, config.slurmd_grace_s, node=self.node)
                       if config.slurmd_pidfile else None)
        self.host_thresholds = HostThresholds.from_dict({
            "disk": config.disk, "memory_min_available": config.memory_min_available,
            "expected_accelerators": config.expected_gpus, "accelerator_glob": config.accelerator_glob})
        self.host_state = HostState()
        self.nvml = _nvml_source(config)
        self.nvml_state = None
        self.neuron = _NeuronFeed(config) if config.neuron != "off" else None
        self.metrics = Metrics(hostname=self.node)
        self.status = AgentStatus()
        self._stop = threading.Event()
        self._server = None
        self._watched_jobs: set[str] = set()
        self._requeued: dict[str, float] = {}
        self._cursor_saved_at = 0.0
        self.port = 0
        self.return_check = None
        if config.return_check == "full" and not config.dry_run:
            self.return_check = ReturnCheck(
                check_command(self.node, config.return_check_config),
                Path(config.state_dir) / f"{self.node}.return-check.log", config.return_check_timeout_s)
        self._check_retry_at = 0.0
        self._last_host = None  # the latest readings, for the state file's device table
        self._last_gpus: list = []
        self._last_neuron = None

    # --- lifecycle --------------------------------------------------------------------

    def stop(self, *_args: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        from pitstop.daemon.http import serve

        self.kmsg.open()
        now = time.time()
        if self.store.on_boot(self.kmsg.boot_id, now):
            self.history.start_boot(self.kmsg.boot_id)
        if self.store.health not in (Health.REBOOTING, Health.CHECKING) and not self.config.dry_run:
            try:
                self._release_hold(now)  # left by an agent that stopped before its check ended
            except SlurmError as exc:
                self._error(f"slurm: {exc}")
        self._server = serve(self.metrics, self.status_json, host=self.config.listen, port=self.config.port)
        self.port = self._server.port
        self._save(now)
        log.info("pitstop agent on %s: kernel log %s, state %s, http://%s:%d, %s",
                 self.node, self.config.kmsg, self.config.state_dir, self.config.listen, self.port,
                 "DRY RUN: deciding and reporting only" if self.config.dry_run else "acting")
        sdnotify.notify("READY=1", f"STATUS=watching {self.node}")
        selector = selectors.DefaultSelector()
        fd = self.kmsg.fileno()
        if fd is not None:
            selector.register(fd, selectors.EVENT_READ)
        timers = {"jobs": Timer(self.config.jobs_interval_s), "telemetry": Timer(self.config.interval_s),
                  "save": Timer(10.0), "watchdog": Timer(sdnotify.watchdog_interval() or 3600.0)}
        try:
            idle_polls = 0
            while not self._stop.is_set():
                if fd is not None:
                    selector.select(min(1.0, self.config.interval_s))
                else:
                    # A plain file has no wake-up: poll fast while lines arrive, and back
                    # off to 5x the poll interval while it is quiet.
                    self._stop.wait(self.config.kmsg_poll_s * min(5, 1 + idle_polls))
                read = self.tick(time.time(), timers)
                idle_polls = 0 if read else idle_polls + 1
        finally:
            selector.close()
            if self.return_check is not None:
                self.return_check.kill()  # a restarted agent starts the check afresh
            self.kmsg.commit()
            if self.neuron is not None:
                self.neuron.close()
            self._save(time.time())
            self.kmsg.close()
            self.joblogs.close()
            if self._server is not None:
                self._server.close()
            sdnotify.notify("STOPPING=1")
            log.info("pitstop agent on %s stopped", self.node)
        return 0

    def tick(self, now: float, timers: dict[str, Timer]) -> bool:
        """One pass: read what is new, decide, act; True when kernel-log lines arrived.
        Errors are logged and counted, never fatal: the agent that dies of a bad line is
        the agent that misses the next fault."""
        self.status.loops += 1
        read = False
        try:
            if timers["jobs"].ready(now):
                self._reconcile(now)
                self._refresh_jobs(now)
            before = _lines_seen(self.kmsg.follower.stats)
            findings = self.kmsg.poll(now)
            read = _lines_seen(self.kmsg.follower.stats) != before
            self._handle(findings, now)
            # The cursor is written (and synced) once a second, or at once after a finding:
            # a crash replays at most a second of lines, and the history makes those duplicates.
            if findings or now - self._cursor_saved_at >= 1.0:
                self.kmsg.commit()
                self._cursor_saved_at = now
            self._check_boot(now)
            # Every tick: one small file read and one psutil call. Not while the node reboots
            # or waits for its return check: slurmd is meant to be gone then.
            if self.slurmd is not None and self.store.health not in (Health.REBOOTING, Health.CHECKING):
                self._handle(self.slurmd.poll(now), now)
            from_logs = self.joblogs.poll(now)
            for job_id, _attempt in self.joblogs.new_attempts:
                self.history.job_started(job_id)  # a restarted step is a new run of the job
            self.joblogs.new_attempts.clear()
            self._handle(from_logs + self.progress.poll(now), now)
            if timers["telemetry"].ready(now):
                self._telemetry(now)
            if timers["watchdog"].ready(now):
                sdnotify.notify("WATCHDOG=1")
            if timers["save"].ready(now):
                self._save(now)
        except SlurmError as exc:
            self._error(f"slurm: {exc}")
        except OSError as exc:
            self._error(f"os: {exc}")
        return read

    def _error(self, message: str) -> None:
        if message != self.status.last_error:
            log.warning("%s", message)
        self.status.last_error = message
        self.store.bump("errors")

    # --- sources ----------------------------------------------------------------------

    def _check_boot(self, now: float) -> None:
        boot_id = self.kmsg.boot_id
        if boot_id and boot_id != self.store.state.boot_id:
            self.store.on_boot(boot_id, now)
            self.history.start_boot(boot_id)
        if self.store.health == Health.CHECKING:
            self._return_to_service(now)

    def _refresh_jobs(self, now: float) -> None:
        jobs = [j for j in self.slurm.jobs(states="RUNNING,COMPLETING") if self.node in j.nodes and j.running]
        current = {j.job_id for j in jobs}
        for job in jobs:
            if job.job_id in self._watched_jobs:
                continue
            self.history.job_started(job.job_id)
            run_dir = _run_dir_of(job.stdout, job.work_dir)
            # A run that restarts in its allocation may be past its first attempt when this
            # node joins it: its output is read from here on, after that attempt's line.
            attempt = current_attempt(run_dir) if restarts_in_allocation(run_dir) else None
            for path in {job.stdout, job.stderr} - {""}:
                self.joblogs.watch(job.job_id, path, attempt=attempt)
            if run_dir is not None and (job.batch_host in ("", self.node)):
                self.progress.watch(job.job_id, run_dir, now)
            self._watched_jobs.add(job.job_id)
        for job_id in self._watched_jobs - current:
            self.joblogs.unwatch(job_id)
            self.progress.unwatch(job_id)
        self._watched_jobs = current

    def _reconcile(self, now: float) -> None:
        """A fenced node that Slurm shows back in service was resumed by a person: the
        fence is over, and what the node does from now on is judged afresh."""
        if self.store.health != Health.FENCED or self.config.dry_run:
            return
        node = self.actions.this_node()
        log.debug("reconcile: %s is %s in Slurm", self.node, node.state_label if node else "unknown")
        if node is None or node.drained or node.failed or node.down or node.fenced_by_pitstop:
            return
        self.store.log_event("warning", now, message=f"{self.node} is back in service in Slurm "
                             f"({node.state_label}) while pitstop had it fenced: taken as an operator's resume")
        self._release_hold(now)
        self.store.clear_findings(now)
        self.history.back_in_service(now)
        self.store.transition(Health.OK, now, reason="", by_operator=True)
        self._save(now)

    def _telemetry(self, now: float) -> None:
        findings: list[Finding] = []
        reading = read_host(self.host_thresholds)
        found, self.host_state = findings_from_host(self.node, reading, self.host_state,
                                                    self.host_thresholds, now)
        findings += found
        self._last_host = reading
        self.metrics.observe_host(reading)
        if self.nvml is not None and self.nvml.enabled:
            from pitstop.daemon.nvml import NvmlState, NvmlThresholds, findings_from_readings
            readings = self.nvml.poll()
            self._last_gpus = readings
            self.metrics.observe_gpus(readings)
            for reading in readings:  # NVML knows which bus id is which index
                if reading.pci_bus_id:
                    self.gpus.bus_index[normalize_bus_id(reading.pci_bus_id)] = reading.index
            found, self.nvml_state = findings_from_readings(
                self.node, readings, self.nvml_state or NvmlState(),
                NvmlThresholds(expected_gpus=self.config.expected_gpus), now)
            findings += found
        if self.neuron is not None:
            from pitstop.daemon.neuron import NeuronThresholds, findings_from_report
            for report in self.neuron.drain():
                self._last_neuron = report
                self.metrics.observe_neuron(report)
                found, self.neuron.state = findings_from_report(
                    self.node, report, self.neuron.state,
                    NeuronThresholds(expected_devices=self.config.expected_neuron_devices), now)
                findings += found
        stats = self.kmsg.follower.stats
        self.metrics.observe_kmsg(_lines_seen(stats), sum(stats.skipped.values()))
        self._handle(findings, now)
        self.store.expire_findings(now, FINDING_MAX_AGE_S)

    # --- deciding and acting ------------------------------------------------------------

    def _handle(self, findings: list[Finding], now: float) -> None:
        for finding in findings:
            self.status.findings += 1
            self.metrics.finding(finding)
            decision = self.policy.decide(finding, now, self.history)
            self.history.record(decision, now)
            self.store.state.history = self.history.to_dict()
            self.store.apply(decision, now, dry_run=self.config.dry_run)
            self._save(now)
            log.info("%s %s%s -> %s%s: %s", finding.signal, finding.code,
                     f" {finding.device}" if finding.device else "", decision.action_class,
                     " (duplicate)" if decision.duplicate else "", decision.detail or decision.reason)
            if decision.fences:
                self._fence(decision, now)
            elif decision.action_class == "app" and not decision.duplicate:
                self._requeue_for(decision, now)
            self.metrics.health(self.store.health)

    def _fence(self, decision: Any, now: float) -> None:
        if self.return_check is not None and self.return_check.running:
            # A check that passes now must not resume a node that failed again meanwhile.
            self.return_check.kill()
            self.store.log_event("warning", now, message="return check stopped: a new fault fences the node")
        reported: list[Outcome] = []

        def report(outcome: Outcome) -> None:  # on record at once (the reboot waits seconds)
            reported.append(outcome)
            self._record([outcome], now)

        outcomes = self.actions.fence(decision.action_class, decision.reason, on_outcome=report)
        self._record([o for o in outcomes if not any(o is r for r in reported)], now)
        tripped = any(o.action == "breaker" for o in outcomes)
        self.status.breaker_open = tripped
        self.metrics.breaker(tripped)
        if tripped:
            # The fence did not hold (or was never made): the node stays in service,
            # suspect, until a person looks.
            self.history.forget_fence(decision)
            if self.store.health == Health.FENCED:
                self.store.transition(Health.SUSPECT, now, reason=f"{decision.reason} (breaker open)")
            self._save(now)
            return
        if self.config.dry_run:
            return
        if decision.action_class == "reboot" and any(o.action == "reboot" and o.ok for o in outcomes):
            if self.store.health == Health.FENCED and self.store.state.fence_class == "reboot":
                self.store.transition(Health.REBOOTING, now, reason=decision.reason)
        self._save(now)

    def _requeue_for(self, decision: Any, now: float) -> None:
        """Restart the job(s) an app decision is about, once per run: a job that restarts in
        its allocation once per attempt (a finding from an attempt already restarted is
        stale), any other once a minute (every rank's log says the same)."""
        if decision.job_id:
            jobs = [j for j in self.slurm.jobs(states="RUNNING") if j.job_id == decision.job_id]
        else:
            jobs = [j for j in self.slurm.jobs(states="RUNNING") if self.node in j.nodes]
        self._requeued = {k: t for k, t in self._requeued.items() if now - t < 3600.0}
        outcomes = []
        for job in jobs:
            run_dir = _run_dir_of(job.stdout, job.work_dir)
            if restarts_in_allocation(run_dir):
                attempt = current_attempt(run_dir)
                seen_in = decision.finding.attempt
                if seen_in is not None and attempt is not None and seen_in < attempt:
                    log.info("job %s: %s was seen in attempt %d, already restarted (now %d): nothing to do",
                             job.job_id, decision.finding.signal, seen_in, attempt)
                    continue
                key = f"{job.job_id}#{attempt}"
                if key in self._requeued:
                    continue
            else:
                key = job.job_id
                if now - self._requeued.get(key, 0.0) < 60.0:
                    continue
            self._requeued[key] = now
            outcomes.append(self.actions.requeue(job.job_id))
        self._record(outcomes, now)
        self._save(now)

    def _record(self, outcomes: list[Outcome], now: float) -> None:
        for outcome in outcomes:
            self.metrics.action(outcome.action)
            self.store.record_action(now, outcome.action, reason=outcome.reason, job_id=outcome.job_id,
                                     ok=outcome.ok, dry_run=outcome.dry_run, detail=outcome.detail)
            level = logging.INFO if outcome.ok else logging.WARNING
            log.log(level, "action %s%s%s: %s", outcome.action,
                    f" job {outcome.job_id}" if outcome.job_id else "",
                    " (dry run)" if outcome.dry_run else "", outcome.detail or outcome.reason)

    def _return_to_service(self, now: float) -> None:
        """CHECKING: the node came back from a reboot with no hardware finding this boot.
        With a return check it goes back only through a passing `check full --resume`."""
        if self.return_check is not None:
            self._gate(now)
            return
        outcome = self.actions.resume_if_ours()
        if outcome is not None:
            self._record([outcome], now)
            if not outcome.ok:
                return
        self._back_in_service(now)

    def _back_in_service(self, now: float, by_operator: bool = False) -> None:
        self._release_hold(now)
        self.store.clear_findings(now)
        self.history.back_in_service(now)
        self.store.transition(Health.OK, now, reason="", by_operator=by_operator)
        self._save(now)

    def _gate(self, now: float) -> None:
        """Start the return check once Slurm has the node back from its reboot and out of
        service; read its verdict when it ends."""
        check = self.return_check
        if check.running:
            result = check.poll()
            if result is not None:
                self._check_ended(result, now)
            return
        if now < self._check_retry_at:
            return
        node = self.actions.this_node()
        if node is None or {"REBOOT_ISSUED", "REBOOT_REQUESTED", "NOT_RESPONDING"} & set(node.flags):
            return  # Slurm has not seen the node's slurmd since the reboot yet
        if node.reason and not node.fenced_by_pitstop:
            self._operator_took_over(node.reason, now)
            return
        if not (node.drained or node.failed):
            # DOWN after a nextstate=down reboot is no hold: Slurm 22.05 can still return
            # the node to service at a later registration (seen on the testbed, with
            # ReturnToService=1, while the check ran). A drain holds through that.
            outcome = self.actions.hold_for_check(self.store.state.reason)
            self._record([outcome], now)
            if not outcome.ok:
                self._check_retry_at = now + self.config.return_check_retry_s
            return
        check.start()
        self.store.log_event("check", now, stage="started", pid=check.pid, command=check.args)
        log.info("return check started on %s (pid %s)", self.node, check.pid)
        self._save(now)

    def _check_ended(self, result: CheckResult, now: float) -> None:
        node = self.actions.this_node()
        verdict = interpret(result, node is None or node.fenced_by_pitstop)
        what = "timed out" if result.timed_out else f"exit {result.returncode}"
        detail = f"check full --resume {what} after {result.seconds:.1f}s: {last_line(result.tail)}"
        self.store.log_event("check", now, stage="ended", verdict=verdict, returncode=result.returncode,
                             seconds=round(result.seconds, 3), detail=detail)
        self._record([Outcome("return_check", ok=verdict == "in-service", detail=detail)], now)
        if verdict == "in-service":
            self._back_in_service(now)
        elif verdict == "replace":
            reason = node.reason if node is not None and node.reason.startswith(REPLACE_REASON) else \
                f"{REPLACE_REASON} full check {what} after {result.seconds:.0f}s"
            self._record(self.actions.fence("replace", reason, requeue_jobs=False), now)
            self._release_hold(now)  # failed for replacement: the failed state holds it now
            self.store.transition(Health.FENCED, now, reason=reason, fence_class="replace")
            self._save(now)
        elif verdict == "operator":
            self._operator_took_over(node.reason if node is not None else "", now)
        else:
            self._check_retry_at = now + self.config.return_check_retry_s
            self._save(now)

    def _release_hold(self, now: float) -> None:
        """The reboot's maintenance hold ends with the way back (passed, failed, or an
        operator's): whoever has the node next needs no reservation in the way."""
        outcome = self.actions.release_hold()
        if outcome is not None:
            self._record([outcome], now)

    def _operator_took_over(self, reason: str, now: float) -> None:
        self.store.log_event("warning", now, message=f"{self.node} carries an operator's reason "
                             f"({reason!r}) after its reboot: pitstop leaves it to them")
        self._back_in_service(now, by_operator=True)

    # --- publishing ---------------------------------------------------------------------

    def _save(self, now: float) -> None:
        self.store.state.updated_at = now
        self.store.state.history = self.history.to_dict()
        telemetry = {"heartbeat_at": now, "pid": os.getpid(), "port": self.port,
                     "dry_run": self.config.dry_run, "breaker_open": self.status.breaker_open,
                     "accelerators_total": self.config.expected_gpus or 0,
                     "jobs_watched": sorted(self._watched_jobs)}
        if self.config.expected_gpus:
            bad = {f.get("device") for f in self.store.state.open_findings
                   if f.get("action_class") in FENCE_CLASSES and f.get("device")}
            telemetry["accelerators_healthy"] = max(0, self.config.expected_gpus - len(bad))
        telemetry["devices"] = device_rows(
            gpus=self._last_gpus, neuron=self._last_neuron,
            paths=self._last_host.accelerator_paths if self._last_host is not None else (),
            findings=self.store.state.open_findings)
        self.store.state.telemetry = telemetry
        self.store.save()

    def status_json(self) -> dict[str, Any]:
        state = self.store.state.to_dict()
        state.pop("history", None)
        return {"node": self.node, "agent": {"started_at": self.status.started_at, "loops": self.status.loops,
                                             "findings": self.status.findings, "last_error": self.status.last_error,
                                             "dry_run": self.config.dry_run,
                                             "breaker_open": self.status.breaker_open},
                **state}


def _lines_seen(stats) -> int:
    return stats.records + stats.passed_over + sum(stats.skipped.values())


def _restarts_in_allocation(job) -> bool:
    """Whether the job's batch script restarts its own steps (its run directory says so)."""
    return restarts_in_allocation(_run_dir_of(job.stdout, job.work_dir))


def _run_dir_of(stdout: str, work_dir: str) -> Path | None:
    """A pitstop run writes its heartbeat beside its output (`RUN_DIR/slurm-%j.out`)."""
    for candidate in (Path(stdout).parent if stdout else None, Path(work_dir) if work_dir else None):
        if candidate is not None and ((candidate / HEARTBEAT).exists() or (candidate / "config.yaml").exists()):
            return candidate
    return None


class _NeuronFeed:
    """neuron-monitor writes a report a second on its own schedule: a thread reads them
    into a bounded queue, and the agent's loop takes what has arrived."""

    def __init__(self, config: AgentConfig) -> None:
        import queue

        from pitstop.daemon.neuron import NeuronMonitor, NeuronState
        self.monitor = NeuronMonitor()
        self.state = NeuronState()
        self.reports: "queue.Queue" = queue.Queue(maxsize=100)
        if self.monitor.enabled:
            threading.Thread(target=self._read, name="neuron-monitor", daemon=True).start()

    def _read(self) -> None:
        import queue
        for report in self.monitor.reports():
            try:
                self.reports.put_nowait(report)
            except queue.Full:  # the loop is behind: the newest reports matter most
                self.reports.get_nowait()
                self.reports.put_nowait(report)

    def drain(self) -> list:
        out = []
        while not self.reports.empty():
            out.append(self.reports.get_nowait())
        return out

    def close(self) -> None:
        self.monitor.close()


def _nvml_source(config: AgentConfig):
    if config.nvml == "off":
        return None
    from pitstop.daemon.nvml import NvmlReplay, NvmlSampler
    if config.nvml.startswith("replay:"):
        return NvmlReplay(Path(config.nvml.split(":", 1)[1]), loop=True)
    return NvmlSampler()


def run_agent(config: AgentConfig) -> int:
    agent = Agent(config)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    return agent.run()
