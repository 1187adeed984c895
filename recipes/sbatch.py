"""The sbatch script of a run: one dataclass, rendered to text, golden-tested.

The script is Slurm's own contract, so it is the one place outside `pitstop.slurm` that
names Slurm commands. What it guarantees:

- the run directory is pinned (`PITSTOP_RUN_DIR`, absolute), so a requeued job runs the
  same script on the same directory and resumes from its newest complete checkpoint;
- restarts are bounded: past `cluster.max_restarts` (Slurm's `SLURM_RESTART_COUNT`) it
  says why and exits non-zero instead of looping on a run that cannot succeed;
- `--signal=B:USR1@N` warns the batch shell N seconds before the time limit; the shell
  forwards USR1 (and TERM) to the srun step, torchrun forwards it to every rank, the ranks
  agree on a last checkpoint and exit, and after a USR1 the shell requeues the job
  (except at the end of a training plan's segment, `PITSTOP_SEGMENT_END` set: the
  next segment's job resumes instead).
  After a TERM (scancel, preemption, the agent's own requeue) it only forwards: whoever
  sent TERM decides whether the job comes back;
- `torchrun` is the one beside the launcher's Python, so the nodes run the same venv;
  the rendezvous is on the first host of the allocation (at its NodeAddr when its name
  does not resolve).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitstop.recipes.errors import RecipeError

TRAIN_MODULE = "pitstop.recipes.train"
# torchrun's default list plus SIGUSR1: torchrun forwards these to its workers.
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
EXIT_TOO_MANY_RESTARTS = 3


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
        )

    def directives(self) -> list[str]:
        """The `#SBATCH` options, in the order they are rendered."""
        options = [f"--job-name={self.job_name}", f"--nodes={self.nodes}",
                   "--ntasks-per-node=1"]
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

    def srun_command(self) -> list[list[str]]:
        """The step, one rendered line per group: srun and torchrun, torchrun's options, the
        module and its argument. One torchrun per node, the rendezvous on the first host."""
        launcher = ["srun", "--kill-on-bad-exit=1"]
        if self.cpus_per_task is not None:
            launcher.append(f"--cpus-per-task={self.cpus_per_task}")
        launcher.append(shlex.quote(str(self.torchrun)))
        options = [
            '--nnodes="$SLURM_NNODES"',
            f"--nproc-per-node={self.procs_per_node}",
            "--rdzv-backend=c10d",
            f'--rdzv-endpoint="$rdzv_host:{self.rdzv_port}"',
            '--rdzv-id="$SLURM_JOB_ID"',
            f"--signals-to-handle={TORCHRUN_SIGNALS}",
            f"--shutdown-timeout={self.signal_seconds}",
        ]
        return [launcher] + [[option] for option in options] + [
            ["-m", self.module, '"$PITSTOP_RUN_DIR"']]

    def render(self) -> str:
        header = [
            "#!/bin/bash",
            f"# pitstop: recipe {self.job_name}; the resolved config is "
            "$PITSTOP_RUN_DIR/config.yaml.",
            "# A requeued job runs this same script on the same run directory and resumes",
            "# from its newest complete checkpoint.",
        ]
        header += [f"#SBATCH {option}" for option in self.directives()]
        srun = " \\\n    ".join(" ".join(line) for line in self.srun_command())
        if self.requeue:
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
fi
if [[ -z "$caught_signal" && "$step_status" -ne 0 ]]; then
    # A rank died (a crash, a killed process): start again from the newest checkpoint,
    # as long as the restarts stay within cluster.max_restarts.
    if (( restart_count < max_restarts )); then
        echo "pitstop: the step failed (status $step_status); requeueing job $SLURM_JOB_ID to resume from its newest checkpoint (restart $((restart_count + 1)) of at most $max_restarts)" >&2
        scontrol requeue "$SLURM_JOB_ID" && exit 0
    fi
    echo "pitstop: the step failed (status $step_status) and job $SLURM_JOB_ID has used its $max_restarts restarts; the run stops here" >&2
fi"""
        else:
            after_usr1 = """\
if [[ "$caught_signal" == USR1 ]]; then
    echo "pitstop: the step ended (status $step_status) after SIGUSR1; cluster.requeue is false, so the job is not requeued" >&2
fi"""
        body = f"""\
set -uo pipefail

export PITSTOP_RUN_DIR={shlex.quote(str(self.run_dir))}
max_restarts={self.max_restarts}
restart_count="${{SLURM_RESTART_COUNT:-0}}"
if (( restart_count > max_restarts )); then
    echo "pitstop: job $SLURM_JOB_ID has been restarted $restart_count times, more than cluster.max_restarts=$max_restarts; not starting it again" >&2
    exit {EXIT_TOO_MANY_RESTARTS}
fi
echo "pitstop: job $SLURM_JOB_ID, restart $restart_count of at most $max_restarts, run dir $PITSTOP_RUN_DIR" >&2

rdzv_host="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
if [[ -z "$rdzv_host" ]]; then
    echo "pitstop: no first host in SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST" >&2
    exit 1
fi
# A node name that does not resolve (a testbed's, say) is reached at its NodeAddr.
if ! getent hosts "$rdzv_host" >/dev/null; then
    rdzv_addr="$(scontrol show node "$rdzv_host" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)"
    rdzv_host="${{rdzv_addr:-$rdzv_host}}"
fi

caught_signal=""
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

{srun} &
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

{after_usr1}
exit "$step_status"
"""
        return "\n".join(header) + "\n\n" + body
