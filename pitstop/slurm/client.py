"""The Slurm client: the only code in pitstop that runs Slurm commands.

Every call is an argument list (no shell ever sees a node name, a reason or a job id),
has a timeout, and fails with one `SlurmError` that carries the command, the exit code
and stderr. Reads take the whole cluster in one `sinfo` and one `squeue` call, so a
refresh costs the same on 3 nodes as on 4,096.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

from pitstop.model import ClusterSnapshot, Job, Node, Reservation
from pitstop.slurm import parse
from pitstop.slurm.hostlist import compress, expand
from pitstop.waiting import wait_until

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0


class SlurmError(RuntimeError):
    """A Slurm command failed: which one, how, and what it said."""

    def __init__(self, cmd: Sequence[str], returncode: int | None, stderr: str,
                 message: str | None = None) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr.strip()
        detail = message or (f"exit {returncode}" if returncode is not None else "failed")
        super().__init__(f"{' '.join(self.cmd[:3])}…: {detail}: {self.stderr[:500]}"
                         if len(self.cmd) > 3 else
                         f"{' '.join(self.cmd)}: {detail}: {self.stderr[:500]}")


@dataclass(frozen=True)
class SlurmVersion:
    major: int
    minor: int
    micro: int

    @property
    def has_json(self) -> bool:
        """`sinfo --json` / `squeue --json` exist from 21.08 (data_parser plugins)."""
        return (self.major, self.minor) >= (21, 8)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor:02d}.{self.micro}"


# A node name as Slurm accepts it: no spaces, brackets only in hostlist form.
_NODE_EXPR = re.compile(r"^[A-Za-z0-9._\-\[\],]+$")
_JOB_ID = re.compile(r"^\d+(_\d+)?(\+\d+)?$")
_RESV_NAME = re.compile(r"^[A-Za-z0-9._\-]+$")
# salloc --immediate found no node for a job to grow onto (busy, or none left to ask for).
_NONE_FREE = re.compile(r"Unable to allocate resources|Requested node configuration is not available|"
                        r"Required node not available|Immediate execution impossible|"
                        r"Requested nodes are busy|Job violates")


class Slurm:
    """A handle on one Slurm cluster.

    `env` adds to the process environment (the testbed passes `SLURM_CONF`);
    `bin_dir` finds the commands elsewhere than on PATH; `use_json` reads with `--json`
    instead of `-O` (None: `-O`, the route that works on every version).
    """

    def __init__(self, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 bin_dir: str | Path | None = None, use_json: bool | None = None) -> None:
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        self.timeout = timeout
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.use_json = bool(use_json)
        self._version: SlurmVersion | None = None
        self.calls = 0  # commands run, for tests and benchmarks that count them

    # --- running ----------------------------------------------------------------------

    def run(self, args: Sequence[str], timeout: float | None = None, check: bool = True,
            cwd: str | Path | None = None) -> str:
        """Run one Slurm command (an argument list) and return its stdout."""
        return self.run_full(args, timeout=timeout, check=check, cwd=cwd).stdout

    def run_full(self, args: Sequence[str], timeout: float | None = None, check: bool = True,
                 cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run one Slurm command and return the whole result (stdout, stderr, exit code)."""
        if isinstance(args, (str, bytes)):
            raise TypeError("Slurm commands are argument lists, never strings")
        cmd = [str(a) for a in args]
        if self.bin_dir:
            cmd[0] = str(self.bin_dir / cmd[0])
        self.calls += 1
        limit = timeout or self.timeout
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                  timeout=limit, cwd=cwd, stdin=subprocess.DEVNULL,
                                  errors="replace")
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise SlurmError(cmd, None, stderr, f"timed out after {limit:.0f}s") from None
        except FileNotFoundError:
            raise SlurmError(cmd, None, "", f"{cmd[0]} not found: is Slurm installed and on PATH?") from None
        if check and proc.returncode != 0:
            raise SlurmError(cmd, proc.returncode, proc.stderr)
        return proc

    # --- reading ----------------------------------------------------------------------

    def version(self) -> SlurmVersion:
        if self._version is None:
            out = self.run(["sinfo", "--version"])
            match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
            if not match:
                raise SlurmError(["sinfo", "--version"], 0, out, "unrecognised version")
            self._version = SlurmVersion(*(int(g) for g in match.groups()))
        return self._version

    def nodes(self) -> list[Node]:
        """Every node, in one `sinfo` call (jobs not filled in: see `snapshot`)."""
        if self.use_json:
            return parse.nodes_from_json(self.run(["sinfo", "--json"]))
        return parse.nodes_from_format(self.run(
            ["sinfo", "-N", "-h", "-O", parse.format_arg(parse.NODE_FIELDS)]))

    def jobs(self, states: str = "all") -> list[Job]:
        """Every job Slurm still knows (pending, running, and finished within MinJobAge),
        in one `squeue` call."""
        if self.use_json:
            return parse.jobs_from_json(self.run(["squeue", "--json"]))
        return parse.jobs_from_format(self.run(
            ["squeue", "-h", "-t", states, "-O", parse.format_arg(parse.JOB_FIELDS)]))

    def snapshot(self) -> ClusterSnapshot:
        """Nodes and jobs together, with each node's running jobs filled in: two calls."""
        nodes = self.nodes()
        jobs = self.jobs()
        by_name = {n.name: n for n in nodes}
        for job in jobs:
            if not job.running:
                continue
            for name in job.nodes:
                if name in by_name:
                    by_name[name].jobs.append(job.job_id)
        return ClusterSnapshot(nodes=nodes, jobs=jobs)

    def node(self, name: str) -> Node | None:
        _check_nodes(name)
        out = self.run(["sinfo", "-N", "-h", "-n", name, "-O", parse.format_arg(parse.NODE_FIELDS)])
        found = parse.nodes_from_format(out)
        return found[0] if found else None

    def job(self, job_id: str) -> Job | None:
        """One job in detail, or None when Slurm no longer knows it."""
        _check_job(job_id)
        try:
            out = self.run(["squeue", "-h", "-t", "all", "-j", str(job_id),
                            "-O", parse.format_arg(parse.JOB_FIELDS)])
        except SlurmError as exc:
            if "Invalid job id" in exc.stderr:
                return None
            raise
        found = [j for j in parse.jobs_from_format(out) if j.job_id == str(job_id)]
        return found[0] if found else None

    def job_details(self, job_id: str) -> dict[str, str]:
        """Slurm's own key=value view of one job (`scontrol show job -o`), for detail panes."""
        _check_job(job_id)
        return parse.job_from_scontrol(self.run(["scontrol", "show", "job", "-o", str(job_id)]))

    def reservations(self) -> list[Reservation]:
        return parse.reservations_from_scontrol(self.run(["scontrol", "show", "reservation", "-o"]))

    # --- nodes ------------------------------------------------------------------------

    def drain(self, nodes: str | Sequence[str], reason: str) -> None:
        self._update_nodes(nodes, "drain", reason)

    def fail(self, nodes: str | Sequence[str], reason: str) -> None:
        self._update_nodes(nodes, "fail", reason)

    def resume(self, nodes: str | Sequence[str]) -> None:
        self._update_nodes(nodes, "resume", None)

    def set_down(self, nodes: str | Sequence[str], reason: str) -> None:
        self._update_nodes(nodes, "down", reason)

    def reboot(self, nodes: str | Sequence[str], reason: str, asap: bool = True,
               nextstate: str = "resume") -> None:
        """Ask Slurm to reboot nodes once idle (`ASAP` drains them meanwhile)."""
        names = _node_arg(nodes)
        if nextstate not in {"resume", "down"}:
            raise ValueError(f"nextstate must be resume or down, not {nextstate!r}")
        args = ["scontrol", "reboot"]
        if asap:
            args.append("ASAP")
        args += [f"nextstate={nextstate}", f"reason={_reason(reason)}", names]
        self.run(args)

    def _update_nodes(self, nodes: str | Sequence[str], state: str, reason: str | None) -> None:
        args = ["scontrol", "update", f"nodename={_node_arg(nodes)}", f"state={state}"]
        if reason is not None:
            args.append(f"reason={_reason(reason)}")
        self.run(args)

    # --- jobs -------------------------------------------------------------------------

    def requeue(self, job_id: str, hold: bool = False) -> None:
        _check_job(job_id)
        self.run(["scontrol", "requeuehold" if hold else "requeue", str(job_id)])

    def cancel(self, job_id: str, signal: str | None = None, batch_only: bool = False) -> None:
        _check_job(job_id)
        args = ["scancel"]
        if signal:
            if not re.fullmatch(r"[A-Z0-9]+", signal):
                raise ValueError(f"bad signal name {signal!r}")
            args.append(f"--signal={signal}")
        if batch_only:
            args.append("--batch")
        self.run(args + [str(job_id)])

    def steps(self, job_id: str, exclude_names: Sequence[str] = (),
              only_names: Sequence[str] | None = None) -> dict[str, list[str]]:
        """The job's running srun steps (`JOB.N`, not its batch or extern step), each with
        the nodes it runs on; steps named in `exclude_names` are left out, and with
        `only_names` all but those."""
        _check_job(job_id)
        out = self.run(["squeue", "--noheader", "--steps", f"--jobs={job_id}", "--format=%i %N %j"])
        pattern = re.compile(rf"{re.escape(str(job_id))}\.\d+")
        steps = {}
        for line in out.splitlines():
            step, nodes, name = (line.strip().split(" ", 2) + ["", ""])[:3]
            if pattern.fullmatch(step) and name not in exclude_names and (only_names is None or name in only_names):
                steps[step] = expand(nodes.strip()) if nodes.strip() else []
        return steps

    def kill_steps(self, job_id: str, steps: Sequence[str]) -> list[str]:
        """SIGKILL these srun steps of the job (ids from `steps`), never its batch shell:
        the script that launched them decides what comes next. The steps killed."""
        targets = list(steps)
        for step in targets:
            if not re.fullmatch(rf"{re.escape(str(job_id))}\.\d+", step):
                raise ValueError(f"not a step of job {job_id}: {step!r}")
        if targets:
            self.run(["scancel", "--signal=KILL", *targets])
        return targets

    def shrink_job(self, job_id: str, keep: Sequence[str]) -> None:
        """Give back every node of a running job's allocation but `keep`. scontrol leaves
        its `slurm_job_ID_resize.*` scripts in its working directory: a temporary one."""
        import tempfile

        _check_job(job_id)
        nodes = _node_arg(list(keep))
        with tempfile.TemporaryDirectory(prefix="pitstop-resize-") as cwd:
            self.run(["scontrol", "update", f"jobid={job_id}", f"NodeList={nodes}"], cwd=cwd)

    def grow_job(self, job: Job, count: int, immediate_s: int = 2, at_least: int | None = None) -> list[str]:
        """Add up to `count` free nodes to a running job, by Slurm's job expansion: an
        allocation (no shell) that depends on the job with `expand:`, away from its nodes
        and with its per-node resources, emptied into it (`NumNodes=0` moves its nodes to
        the job, the job's `NumNodes=ALL` lets its steps use them). The nodes added; []
        when none is free within `immediate_s`; with `at_least`, as many as are free
        between that and `count`. (A job resizes more than once only where
        Slurm keeps an accounting database: without slurmdbd the second resize fails.)
        Raises SlurmError when Slurm refuses (without SchedulerParameters=
        permit_job_expansion: "Requested operation not supported on this system")."""
        import tempfile

        _check_job(job.job_id)
        nodes = f"{at_least}-{count}" if at_least is not None and 0 < at_least < count else str(count)
        args = ["salloc", "--no-shell", f"--immediate={immediate_s}", f"--nodes={nodes}",
                f"--dependency=expand:{job.job_id}", f"--job-name={job.name or 'job'}-grow"]
        if job.nodes:
            args.append(f"--exclude={_node_arg(job.nodes)}")
        if job.partition:
            args.append(f"--partition={job.partition}")
        if job.reservation:
            args.append(f"--reservation={job.reservation}")
        gres = ",".join(g.removeprefix("gres:") for g in job.tres_per_node.split(",") if g)
        if gres:
            args.append(f"--gres={gres}")
        details = self.job_details(job.job_id)  # the new nodes get what each of the job's has
        if details.get("MinCPUsNode", "").isdigit() and int(details["MinCPUsNode"]) > 1:
            args.append(f"--mincpus={details['MinCPUsNode']}")
        if re.fullmatch(r"[1-9]\d*[KMGT]?", details.get("MinMemoryNode", "")):
            args.append(f"--mem={details['MinMemoryNode']}")
        if details.get("OverSubscribe") == "NO":
            args.append("--exclusive")
        with tempfile.TemporaryDirectory(prefix="pitstop-resize-") as cwd:
            proc = self.run_full(args, check=False, timeout=immediate_s + self.timeout, cwd=cwd)
            granted = re.search(r"Granted job allocation (\d+)", proc.stderr)
            if granted is None:
                if proc.returncode != 0 and not _NONE_FREE.search(proc.stderr):
                    raise SlurmError(args, proc.returncode, proc.stderr)
                return []
            helper = granted.group(1)
            try:
                self.run(["scontrol", "update", f"jobid={helper}", "NumNodes=0"], cwd=cwd)
                self.run(["scontrol", "update", f"jobid={job.job_id}", "NumNodes=ALL"], cwd=cwd)
            finally:
                self.run(["scancel", helper], check=False)
        grown = self.job(job.job_id)
        return [n for n in (grown.nodes if grown else []) if n not in job.nodes]

    def hold(self, job_id: str) -> None:
        _check_job(job_id)
        self.run(["scontrol", "hold", str(job_id)])

    def release(self, job_id: str) -> None:
        _check_job(job_id)
        self.run(["scontrol", "release", str(job_id)])

    def update_job(self, job_id: str, **fields: str) -> None:
        """`scontrol update jobid=ID Key=Value…` (a time limit cut, a new reservation)."""
        _check_job(job_id)
        args = ["scontrol", "update", f"jobid={job_id}"]
        for key, value in fields.items():
            if not re.fullmatch(r"[A-Za-z]+", key):
                raise ValueError(f"bad job field {key!r}")
            args.append(f"{key}={value}")
        self.run(args)

    def submit(self, script: str | Path, args: Sequence[str] = (), cwd: str | Path | None = None) -> str:
        """Submit a batch script with `sbatch --parsable` and return the job id."""
        out = self.run(["sbatch", "--parsable", *args, str(script)], cwd=cwd)
        job_id = out.strip().split(";")[0]
        if not _JOB_ID.match(job_id):
            raise SlurmError(["sbatch", str(script)], 0, out, "no job id in sbatch's output")
        return job_id

    # --- reservations -----------------------------------------------------------------

    def create_reservation(self, name: str, start: str, duration: str | None = None,
                           end: str | None = None, node_count: int | None = None,
                           nodes: str | Sequence[str] | None = None, users: Sequence[str] = ("root",),
                           partition: str | None = None, flags: Sequence[str] = ()) -> None:
        """Create a reservation; `start` is Slurm's time syntax (`now`, `2026-12-01T10:00`)."""
        if not _RESV_NAME.match(name):
            raise ValueError(f"bad reservation name {name!r}")
        args = ["scontrol", "create", "reservation", f"ReservationName={name}", f"StartTime={start}"]
        if duration is not None:
            args.append(f"Duration={duration}")
        if end is not None:
            args.append(f"EndTime={end}")
        if node_count is not None:
            args.append(f"NodeCnt={int(node_count)}")
        if nodes is not None:
            args.append(f"Nodes={_node_arg(nodes)}")
        if partition:
            args.append(f"PartitionName={partition}")
        if users:
            args.append(f"Users={','.join(users)}")
        if flags:
            args.append(f"Flags={','.join(flags)}")
        proc = self.run_full(args, check=False)
        if proc.returncode != 0 or "Reservation created" not in proc.stdout:
            raise SlurmError(args, proc.returncode, proc.stderr or proc.stdout,
                             "reservation not created")

    def delete_reservation(self, name: str) -> None:
        if not _RESV_NAME.match(name):
            raise ValueError(f"bad reservation name {name!r}")
        self.run(["scontrol", "delete", f"ReservationName={name}"])

    # --- helpers ----------------------------------------------------------------------

    def wait_for(self, predicate: Callable[["Slurm"], T], timeout: float, interval: float = 0.2,
                 what: str = "condition") -> T:
        """Poll `predicate(self)` until it is truthy; Slurm errors count as "not yet"."""
        return wait_until(lambda: predicate(self), timeout, what=what, interval=interval,
                          retry_on=(SlurmError,))

    # --- reservations, for training plans (issue #8) ------------------------------------

    def reservation(self, name: str) -> Reservation | None:
        """One reservation by name, or None when Slurm has none of that name."""
        return next((r for r in self.reservations() if r.name == name), None)

    def update_reservation(self, name: str, **fields: str) -> None:
        """`scontrol update ReservationName=NAME Key=Value…` (a later EndTime, say)."""
        if not _RESV_NAME.match(name):
            raise ValueError(f"bad reservation name {name!r}")
        args = ["scontrol", "update", f"ReservationName={name}"]
        for key, value in fields.items():
            if not re.fullmatch(r"[A-Za-z]+", key) or not re.fullmatch(r"[A-Za-z0-9:.,_\-+]+", str(value)):
                raise ValueError(f"bad reservation field {key}={value!r}")
            args.append(f"{key}={value}")
        self.run(args)

    def test_only_start(self, args: Sequence[str]) -> float | None:
        """Where `sbatch --test-only ARGS --wrap true` says such a job would start (Slurm's
        guess from running jobs and reservations; no job is made)."""
        proc = self.run_full(["sbatch", "--test-only", *args, "--wrap", "true"], check=False)
        if proc.returncode != 0:
            raise SlurmError(["sbatch", "--test-only", *args], proc.returncode, proc.stderr)
        return parse.test_only_start(proc.stderr + proc.stdout)


def _node_arg(nodes: str | Sequence[str]) -> str:
    text = nodes if isinstance(nodes, str) else compress(list(nodes))
    _check_nodes(text)
    return text


def _check_nodes(text: str) -> None:
    if not text or not _NODE_EXPR.match(text):
        raise ValueError(f"not a Slurm node name or hostlist: {text!r}")
    expand(text)


def _check_job(job_id: str) -> None:
    if not _JOB_ID.match(str(job_id)):
        raise ValueError(f"not a Slurm job id: {job_id!r}")


def _reason(reason: str) -> str:
    """Slurm stores a reason as one line; newlines would corrupt `sinfo -R` and our parse."""
    cleaned = " ".join(reason.split())
    if not cleaned:
        raise ValueError("a reason is required")
    return cleaned
