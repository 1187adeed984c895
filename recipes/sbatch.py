"""The sbatch script of a run: one dataclass, rendered to text, golden-tested.

The script is Slurm's own contract, so it is the one place outside `pitstop.slurm` that
names Slurm commands. What it guarantees:

- the run directory is pinned (`PITSTOP_RUN_DIR`, absolute), so a requeued job runs the
  same script on the same directory and resumes from its newest complete checkpoint;
- it restarts in its allocation: the job asks for `cluster.nodes` and up to
  `cluster.spare_nodes` more with `--no-kill` (a failed node does not end the job), and
  a step that fails — a rank died, the agent ended it over a fault, a node went down — is
  started again from the newest checkpoint on the allocation's healthy nodes, a spare in
  place of a fenced node (`pitstop.recipes.allocation` picks them and gives the fenced
  ones back between attempts). Only when too few healthy nodes are left, the batch
  host itself is fenced, or Slurm refuses to create the step twice running (srun's own failures end
  with EXIT_STEP_REFUSED), does the job requeue itself. Every start and end is a line in
  `RUN_DIR/attempts.jsonl`, whose presence tells the agent to end this job's step rather
  than requeue it (`pitstop.rundir`);
- restarts are bounded: past `cluster.max_restarts` starts of the step (Slurm's
  `SLURM_RESTART_COUNT` is checked too) it says why and exits non-zero instead of
  looping on a run that cannot succeed;
- a step counts as finished only when the runtime says so (`RUN_DIR/last-exit` names
  this attempt): srun can end with status 0 for a step that Slurm ended on a node failure;
- `--signal=B:USR1@N` warns the batch shell N seconds before the time limit; the shell
  forwards USR1 (and TERM) to the srun step, torchrun forwards it to every rank, the ranks
  agree on a last checkpoint and exit, and after a USR1 the shell requeues the job
  (except at the end of a training plan's segment, `PITSTOP_SEGMENT_END` set: the
  next segment's job resumes instead).
  After a TERM (scancel, preemption, a requeue) it only forwards: whoever sent TERM
  decides whether the job comes back;
- `torchrun` and `python` are the ones beside the launcher's Python, so the nodes run the
  same venv; the rendezvous is on the first node of the step (at its NodeAddr when its
  name does not resolve).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitstop.recipes.errors import RecipeError
from pitstop.rundir import ATTEMPTS, LAST_EXIT, WARM_STEP_NAME

TRAIN_MODULE = "pitstop.recipes.train"
WARM_MODULE = "pitstop.recipes.warm"
# torchrun's default list plus SIGUSR1: torchrun forwards these to its workers.
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
EXIT_TOO_MANY_RESTARTS = 3
KEEPER_INTERVAL_S = 3
# A step Slurm cannot create within this long fails (and is started again) rather than
# leaving the run waiting for CPUs forever (Slurm 22.05 can miscount a resized job's).
STEP_CREATE_TIMEOUT_S = 60
# srun's own failures (SLURM_EXIT_ERROR: the step could not be created) end with this
# status, which tells them from the training's; REFUSED_STEPS_REQUEUE of them running
# requeue the job: a fresh allocation is the way out of a job Slurm keeps refusing steps.
EXIT_STEP_REFUSED = 75
REFUSED_STEPS_REQUEUE = 2
KEEPER_RETRY_S = 4
# A rank waits this long for its node's warm server while it imports (started just
# before the step), rather than importing torch beside it; then it starts cold.
WARM_WAIT_S = 120


def default_python() -> Path:
    """This Python, as the venv names it (not symlink-resolved)."""
    return Path(sys.executable).absolute()


def default_torchrun() -> Path:
    """The torchrun beside this Python (not symlink-resolved, so a venv stays a venv)."""
    return Path(sys.executable).absolute().parent / "torchrun"


def _sbatch_path(label: str, path: Path) -> Path:
    """An absolute path that an `#SBATCH` line can carry (no whitespace, no `%` pattern)."""
    path = Path(path).absolute()
    text = str(path)
    if any(ch.isspace() for ch in text) or "%" in text or '"' in text:
        raise RecipeError(f"{label} {text!r}: sbatch cannot take a path with whitespace, "
                          "'%' or quotes in an #SBATCH line; choose another directory")
    return path


@dataclass(frozen=True)
class SbatchScript:
    """Everything the rendered script depends on; `render()` is a pure function of it."""

    job_name: str
    run_dir: Path
    chdir: Path
    torchrun: Path
    nodes: int
    procs_per_node: int
    spare_nodes: int = 0
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    time: str = "01:00:00"
    partition: str | None = None
    reservation: str | None = None
    exclusive: bool = False
    requeue: bool = True
    max_restarts: int = 10
    signal_seconds: int = 60
    rdzv_port: int = 29500
    module: str = TRAIN_MODULE
    python: Path | None = None  # runs pitstop.recipes.allocation (and the ranks under srun); None: beside torchrun
    launcher: str = "torchrun"  # torchrun: one agent a node starts the ranks; srun: srun starts each rank
    warm_start: bool = False  # srun only: a server per node with torch imported forks the ranks

    @classmethod
    def from_config(cls, cfg: dict[str, Any], run_dir: Path, chdir: Path | None = None,
                    torchrun: Path | None = None) -> "SbatchScript":
        """The script of a resolved config, for a run in `run_dir`, launched from `chdir`."""
        cluster = cfg["cluster"]
        return cls(
            job_name=cfg["name"],
            run_dir=_sbatch_path("run directory", run_dir),
            chdir=_sbatch_path("working directory", chdir or Path.cwd()),
            torchrun=Path(torchrun).absolute() if torchrun else default_torchrun(),
            nodes=cluster["nodes"],
            procs_per_node=cluster["procs_per_node"],
            spare_nodes=cluster["spare_nodes"],
            gpus_per_node=cluster["gpus_per_node"],
            cpus_per_task=cluster["cpus_per_task"],
            time=cluster["time"],
            partition=cluster["partition"],
            reservation=cluster["reservation"],
            exclusive=cluster["exclusive"],
            requeue=cluster["requeue"],
            max_restarts=cluster["max_restarts"],
            signal_seconds=cluster["signal_seconds"],
            rdzv_port=cluster["rdzv_port"],
            launcher=cluster["launcher"],
            warm_start=cluster["warm_start"],
        )

    def directives(self) -> list[str]:
        """The `#SBATCH` options, in the order they are rendered."""
        # With spares, N-(N+S): the job starts as soon as N nodes are free (a requeued one
        # too, while fenced nodes are away), and holds up to S more as stand-ins. Slurm
        # fills a node range only when the task count is left to it (one per node; the
        # step asks for its own), so --ntasks-per-node goes with a fixed count only.
        if self.spare_nodes:
            options = [f"--job-name={self.job_name}", f"--nodes={self.nodes}-{self.nodes + self.spare_nodes}"]
        else:
            options = [f"--job-name={self.job_name}", f"--nodes={self.nodes}", "--ntasks-per-node=1"]
        options.append("--no-kill")
        if self.exclusive:
            options.append("--exclusive")
        options.append("--requeue" if self.requeue else "--no-requeue")
        options.append(f"--signal=B:USR1@{self.signal_seconds}")
        if self.gpus_per_node > 0:
            options.append(f"--gres=gpu:{self.gpus_per_node}")
        if self.cpus_per_task is not None:
            options.append(f"--cpus-per-task={self.cpus_per_task}")
        options.append(f"--time={self.time}")
        if self.partition:
            options.append(f"--partition={self.partition}")
        if self.reservation:
            options.append(f"--reservation={self.reservation}")
        options += [f"--output={self.run_dir}/slurm-%j.out", "--open-mode=append",
                    f"--chdir={self.chdir}"]
        return options

    def python_path(self) -> Path:
        return self.python or self.torchrun.parent / "python"

    def srun_command(self) -> list[list[str]]:
        """The step, one rendered line per group: srun on the picked nodes, then either
        torchrun (one a node, the rendezvous on the step's first node, a rendezvous id of
        its own per attempt) or, with `launcher: srun`, the ranks themselves (srun starts
        every one: no agent to import torch first, no rendezvous round, a faster restart;
        the runtime reads its rank from Slurm's task variables), then the module."""
        if self.launcher == "srun":
            launcher = ["srun", "--kill-on-bad-exit=1", f"--immediate={STEP_CREATE_TIMEOUT_S}", f"--nodes={self.nodes}",
                        f"--ntasks={self.nodes * self.procs_per_node}",
                        f"--ntasks-per-node={self.procs_per_node}", '--nodelist="$step_nodes"']
            if self.cpus_per_task is not None:
                launcher.append(f"--cpus-per-task={max(1, self.cpus_per_task // self.procs_per_node)}")
            if self.warm_start:  # overlaps, as the servers do: see pitstop.recipes.allocation._resize
                launcher.append("--overlap")
            launcher.append(shlex.quote(str(self.python_path())))
            if self.warm_start:  # the rank is forked by the node's warm server (cold without one)
                return [launcher, ["-m", WARM_MODULE, "run", self.module, '"$PITSTOP_RUN_DIR"']]
            return [launcher, ["-m", self.module, '"$PITSTOP_RUN_DIR"']]
        launcher = ["srun", "--kill-on-bad-exit=1", f"--immediate={STEP_CREATE_TIMEOUT_S}", f"--nodes={self.nodes}",
                    f"--ntasks={self.nodes}",
                    "--ntasks-per-node=1", '--nodelist="$step_nodes"']
        if self.cpus_per_task is not None:
            launcher.append(f"--cpus-per-task={self.cpus_per_task}")
        launcher.append(shlex.quote(str(self.torchrun)))
        options = [
            f"--nnodes={self.nodes}",
            f"--nproc-per-node={self.procs_per_node}",
            "--rdzv-backend=c10d",
            f'--rdzv-endpoint="$rdzv_host:{self.rdzv_port}"',
            '--rdzv-id="$SLURM_JOB_ID.$attempt"',
            f"--signals-to-handle={TORCHRUN_SIGNALS}",
            f"--shutdown-timeout={self.signal_seconds}",
        ]
        return [launcher] + [[option] for option in options] + [
            ["-m", self.module, '"$PITSTOP_RUN_DIR"']]

    def _warm_servers(self) -> str:
        """`start_warm_servers NODES`: a warm server on each of NODES without one. The
        loop calls it once the step's nodes are picked (so never while the job may be
        resized: `pitstop.recipes.allocation.quiet`), on all the usable nodes, spares
        too, so that a restart on a spare is warm as well; the ranks wait for servers
        still importing (WARM_WAIT_S)."""
        return f"""\
declare -A warm_pids=()
start_warm_servers() {{  # NODES STEP_NODES: a warm server (torch imported, forks the ranks) on each node without one
    local node pid nodes defer
    IFS=, read -ra nodes <<< "$1"
    for node in "${{nodes[@]}}"; do
        pid="${{warm_pids[$node]:-}}"
        if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
            # A spare's server imports once the step trains (or a rank asks for it): on a
            # host the nodes share, its imports would slow the step's own servers.
            defer=""
            [[ ",$2," == *",$node,"* ]] || defer=--defer
            srun --overlap --immediate={STEP_CREATE_TIMEOUT_S} --job-name={WARM_STEP_NAME} --nodes=1 --ntasks=1 \\
                --nodelist="$node" --kill-on-bad-exit=0 \\
                "$python" -m {WARM_MODULE} serve $defer >> "$PITSTOP_RUN_DIR/warm-servers.log" 2>&1 &
            warm_pids[$node]=$!
        fi
    done
}}
export PITSTOP_WARM_WAIT={WARM_WAIT_S}
"""

    def _keeper(self) -> str:
        """The background keeper: it grows the allocation back to nodes + spares once a
        node is free again (a spare a fault used is replaced before the next fault needs
        it). It asks Python only when the allocation's size changed or is short."""
        return f"""\
keep_allocation() {{  # in the background: regrow used spares
    local usable="" seen="" count records grow_to={self.nodes + self.spare_nodes} status asked=-1000 have
    while :; do
        # Ask again when the allocation changed or an attempt started or ended, or (not
        # more often than every {KEEPER_RETRY_S} s) while it is short of usable nodes.
        count="$(squeue -h -j "$SLURM_JOB_ID" -o %D 2>/dev/null)"
        records="$(wc -l < "$attempts_file" 2>/dev/null)"
        IFS=, read -ra have <<< "$usable"
        if [[ -z "$usable" || "$count $records" != "$seen" ]] || \
                (( ${{#have[@]}} < grow_to && SECONDS - asked >= {KEEPER_RETRY_S} )); then
            usable="$("$python" -m pitstop.recipes.allocation "$SLURM_JOB_ID" "$train_nodes" --keep "$grow_to")"
            status=$?
            if (( status == 5 )); then
                grow_to=0  # Slurm does not let jobs grow here: only watch
            fi
            asked=$SECONDS
            seen="$(squeue -h -j "$SLURM_JOB_ID" -o %D 2>/dev/null) $records"
        fi
        sleep "${{PITSTOP_KEEPER_INTERVAL_S:-{KEEPER_INTERVAL_S}}}"
    done
}}
keep_allocation &
keeper_pid=$!
trap 'kill "$keeper_pid" 2>/dev/null' EXIT
"""

    def render(self) -> str:
        header = [
            "#!/bin/bash",
            f"# pitstop: recipe {self.job_name}; the resolved config is "
            "$PITSTOP_RUN_DIR/config.yaml.",
            "# A failed step starts again in this allocation (on a spare in place of a fenced",
            "# node); a requeued job runs this same script on the same run directory. Both",
            "# resume from the newest complete checkpoint.",
        ]
        header += [f"#SBATCH {option}" for option in self.directives()]
        srun = " \\\n    ".join(" ".join(line) for line in self.srun_command())
        if self.requeue:
            requeue = """\
requeue_job() {  # why, the status to end with (unused: the loop's bound came first)
    # The loop checked the bound for the attempt about to start: the requeued job starts it.
    echo "pitstop: $1; requeueing job $SLURM_JOB_ID to resume from its newest checkpoint (restart $attempt of at most $max_restarts)" >&2
    if scontrol requeue "$SLURM_JOB_ID"; then
        exit 0
    fi
    echo "pitstop: scontrol requeue $SLURM_JOB_ID failed; the run stops here" >&2
    exit 1
}"""
            after_usr1 = """\
        if [[ "$caught_signal" == USR1 && -n "${PITSTOP_SEGMENT_END:-}" ]]; then
            echo "pitstop: the step ended (status $step_status) after SIGUSR1 at the end of a training plan's segment; not requeueing: the next segment's job resumes from the newest checkpoint" >&2
            exit 0
        fi
        if [[ "$caught_signal" == USR1 ]]; then
            echo "pitstop: the step ended (status $step_status) after SIGUSR1; requeueing job $SLURM_JOB_ID to resume from its newest checkpoint" >&2
            if scontrol requeue "$SLURM_JOB_ID"; then
                exit 0
            fi
            echo "pitstop: scontrol requeue $SLURM_JOB_ID failed; the run stops here" >&2
            exit 1
        fi"""
        else:
            requeue = """\
requeue_job() {  # why, the status to end with
    echo "pitstop: $1; cluster.requeue is false, so job $SLURM_JOB_ID is not requeued; the run stops here" >&2
    exit "$2"
}"""
            after_usr1 = """\
        if [[ "$caught_signal" == USR1 ]]; then
            echo "pitstop: the step ended (status $step_status) after SIGUSR1; cluster.requeue is false, so the job is not requeued" >&2
        fi"""
        # With warm start the restarts replace used spares (the keeper cannot grow the job
        # beside the servers): no keeper.
        keeper = (self._warm_servers() if self.warm_start
                  else self._keeper() if self.spare_nodes else "")
        # A resize between attempts grows back to the spares too, where nodes are free.
        placement_args = f" --total {self.nodes + self.spare_nodes}" if self.spare_nodes else ""
        if self.warm_start:  # every step overlaps: resize around the servers that stay
            placement_args += " --overlap"
        warm_start = "" if not self.warm_start else """\
    start_warm_servers "$usable_nodes" "$step_nodes"  # where none runs; the ranks wait for them
"""
        srun_env = "" if self.launcher != "srun" else f"""\
    # srun starts every rank: they meet at the step's first node (the runtime takes its
    # rank from SLURM_PROCID).
    export PITSTOP_LAUNCHER=srun MASTER_ADDR="$rdzv_host" MASTER_PORT={self.rdzv_port}
"""
        body = f"""\
set -uo pipefail

export PITSTOP_RUN_DIR={shlex.quote(str(self.run_dir))}
python={shlex.quote(str(self.python_path()))}
train_nodes={self.nodes}
max_restarts={self.max_restarts}
attempts_file="$PITSTOP_RUN_DIR/{ATTEMPTS}"
restart_count="${{SLURM_RESTART_COUNT:-0}}"
if (( restart_count > max_restarts )); then
    echo "pitstop: job $SLURM_JOB_ID has been restarted $restart_count times, more than cluster.max_restarts=$max_restarts; not starting it again" >&2
    exit {EXIT_TOO_MANY_RESTARTS}
fi
echo "pitstop: job $SLURM_JOB_ID, restart $restart_count of at most $max_restarts, run dir $PITSTOP_RUN_DIR" >&2

caught_signal=""
quick_failures=0
refused_steps=0
wait_interrupted=""
step_pid=""
forward_signal() {{
    caught_signal="$1"
    wait_interrupted=1
    echo "pitstop: caught SIG$1; forwarding it to the training step so that it checkpoints" >&2
    if [[ -n "$step_pid" ]]; then
        kill -s "$1" "$step_pid" 2>/dev/null || true
    fi
}}
trap 'forward_signal USR1' USR1
trap 'forward_signal TERM' TERM

record() {{  # one line of the run's attempts: event, attempt, more JSON fields
    printf '{{"event": "%s", "attempt": %d, "job_id": "%s", "restart_count": %d, "time": %s%s}}\\n' \\
        "$1" "$2" "$SLURM_JOB_ID" "$restart_count" "$(date +%s.%N)" "${{3:-}}" >> "$attempts_file"
}}

{requeue}
{keeper}
while :; do
    attempt="$(grep -c '"event": "start"' "$attempts_file" 2>/dev/null)"
    attempt="${{attempt:-0}}"
    if (( attempt > max_restarts )); then
        echo "pitstop: the run's step has been started $attempt times, more than cluster.max_restarts=$max_restarts; not starting it again" >&2
        exit {EXIT_TOO_MANY_RESTARTS}
    fi
    # The allocation's healthy nodes (fenced ones are given back); status 4: too few.
    for try in 1 2 3; do
        placement="$("$python" -m pitstop.recipes.allocation "$SLURM_JOB_ID" "$train_nodes"{placement_args})"
        placement_status=$?
        (( placement_status == 1 )) || break
        sleep 2
    done
    if (( placement_status == 4 )); then
        requeue_job "too few healthy nodes left in the allocation" 1
    elif (( placement_status != 0 )); then
        echo "pitstop: could not ask Slurm for the allocation's nodes (status $placement_status); the run stops here" >&2
        exit 1
    fi
    read -r step_nodes rdzv_host usable_nodes <<< "$placement"
{warm_start}    # The record first, then the line: an agent that starts following the output between
    # the two reads this attempt from the record, and the line only confirms it.
    record start "$attempt" ", \\"nodes\\": \\"$step_nodes\\""
    echo "pitstop: attempt $attempt of job $SLURM_JOB_ID: the step starts on $step_nodes" >&2
    export PITSTOP_ATTEMPT="$attempt"
    step_started=$SECONDS
{srun_env}
    SLURM_EXIT_ERROR={EXIT_STEP_REFUSED} {srun} &
    step_pid=$!
    if [[ -n "$caught_signal" ]]; then
        kill -s "$caught_signal" "$step_pid" 2>/dev/null || true
    fi

    # A trapped signal cuts `wait` short: wait again, until a wait returns the step's own status.
    while :; do
        wait "$step_pid"
        step_status=$?
        if [[ -n "$wait_interrupted" ]]; then
            wait_interrupted=""
            continue
        fi
        break
    done
    step_pid=""
    record end "$attempt" ", \\"status\\": $step_status"

    # Finished only when the runtime says so for this attempt ("ATTEMPT REASON STEP").
    exit_attempt="" exit_reason="" exit_step=""
    read -r exit_attempt exit_reason exit_step 2>/dev/null < "$PITSTOP_RUN_DIR/{LAST_EXIT}" || true
    if [[ "$step_status" -eq 0 && "$exit_attempt" == "$attempt" && "$exit_reason" == finished ]]; then
        echo "pitstop: training finished at step $exit_step" >&2
        exit 0
    fi
    if [[ "$step_status" -eq 0 && "$exit_attempt" == "$attempt" && "$exit_reason" == segment_end ]]; then
        echo "pitstop: the training plan's segment ended at step $exit_step; the next segment's job resumes from it" >&2
        exit 0
    fi
    if [[ -n "$caught_signal" ]]; then
{after_usr1}
        exit "$step_status"
    fi
    # A rank died, the agent ended the step over a fault, or a node went down: start
    # again from the newest checkpoint, as long as the restarts stay within bounds.
    if (( attempt >= max_restarts )); then
        echo "pitstop: the step failed (status $step_status) and job $SLURM_JOB_ID has used its $max_restarts restarts; the run stops here" >&2
        exit $(( step_status == 0 ? 1 : step_status ))
    fi
    # srun itself failed (it could not create the step: "Requested nodes are busy" for
    # STEP_CREATE_TIMEOUT_S) again and again: the allocation is the trouble, not the run.
    if (( step_status == {EXIT_STEP_REFUSED} )); then
        refused_steps=$(( refused_steps + 1 ))
    else
        refused_steps=0
    fi
    if (( refused_steps >= {REFUSED_STEPS_REQUEUE} )); then
        requeue_job "srun could not start the step $refused_steps times running (status {EXIT_STEP_REFUSED}: Slurm refused it)" 1
    fi
    # A step that fails at once, again and again (it cannot even be created), waits a
    # little longer each time instead of spending the restarts in a few seconds.
    if (( SECONDS - step_started < 10 )); then
        quick_failures=$(( quick_failures + 1 ))
    else
        quick_failures=0
    fi
    backoff=$(( quick_failures > 1 ? (1 << (quick_failures - 2 < 5 ? quick_failures - 2 : 5)) : 0 ))
    echo "pitstop: the step failed (status $step_status); starting it again in the allocation from the newest checkpoint (restart $((attempt + 1)) of at most $max_restarts)" >&2
    if (( backoff > 0 )); then
        echo "pitstop: the last $quick_failures steps failed within 10 s; waiting $backoff s first" >&2
        sleep "$backoff"
    fi
done
"""
        return "\n".join(header) + "\n\n" + body
