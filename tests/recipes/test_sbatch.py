"""The sbatch script: golden files for the collection, its directives, and its signal,
restart, requeue and restart-bound logic run by bash against stand-in `srun`, `scontrol`
and `python` scripts (no Slurm here: tests/recipes/test_launch_e2e.py runs real jobs).

`PITSTOP_UPDATE_GOLDEN=1 pytest tests/recipes/test_sbatch.py` rewrites the golden files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pitstop.recipes.compose import compose, recipe_names
from pitstop.recipes.errors import RecipeError
from pitstop.recipes.sbatch import WARM_WAIT_S, SbatchScript, default_torchrun

GOLDEN = Path(__file__).parent / "golden"
RUN_DIR = Path("/shared/runs/golden")
CHDIR = Path("/shared/work")
TORCHRUN = Path("/opt/pitstop/venv/bin/torchrun")
TINY = "llama3-tiny-seq256-cpu-pretrain"


def _script(name: str, overrides: list[str] = (), **changes) -> SbatchScript:
    script = SbatchScript.from_config(compose(name, list(overrides)), RUN_DIR, chdir=CHDIR,
                                      torchrun=TORCHRUN)
    return replace(script, **changes) if changes else script


@pytest.mark.parametrize("name", recipe_names())
def test_golden(name):
    text = _script(name).render()
    golden = GOLDEN / f"{name}.sbatch"
    if os.environ.get("PITSTOP_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}; run with PITSTOP_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"{name}: the rendered script differs from {golden}; if the change is intended, "
        "rerun with PITSTOP_UPDATE_GOLDEN=1 and review the diff")


def test_every_golden_file_belongs_to_a_recipe():
    assert {p.stem for p in GOLDEN.glob("*.sbatch")} == set(recipe_names())


@pytest.mark.parametrize("name", recipe_names())
def test_rendered_script_is_valid_bash(name):
    result = subprocess.run(["bash", "-n"], input=_script(name).render(), text=True,
                            capture_output=True)
    assert result.returncode == 0, result.stderr


def _directives(script: SbatchScript) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.render().splitlines()
            if line.startswith("#SBATCH ")]


def test_cpu_directives():
    lines = _directives(_script(TINY))
    assert lines[:3] == [f"--job-name={TINY}", "--nodes=2", "--ntasks-per-node=1"]
    assert "--requeue" in lines and "--signal=B:USR1@30" in lines
    assert "--exclusive" not in lines
    assert not any(line.startswith("--gres") for line in lines)
    assert "--cpus-per-task=2" in lines and "--time=00:30:00" in lines
    assert f"--output={RUN_DIR}/slurm-%j.out" in lines
    assert "--open-mode=append" in lines and f"--chdir={CHDIR}" in lines
    assert not any(line.startswith(("--partition", "--reservation")) for line in lines)


def test_gpu_directives():
    lines = _directives(_script("llama3-70b-seq8k-gpu-pretrain"))
    assert "--nodes=8" in lines and "--gres=gpu:8" in lines and "--exclusive" in lines
    assert "--signal=B:USR1@600" in lines


def test_optional_directives_follow_the_config():
    script = _script(TINY, ["cluster.partition=debug", "cluster.reservation=maint",
                            "cluster.exclusive=true", "cluster.requeue=false",
                            "cluster.cpus_per_task=null"])
    lines = _directives(script)
    assert "--partition=debug" in lines and "--reservation=maint" in lines
    assert "--exclusive" in lines and "--no-requeue" in lines and "--requeue" not in lines
    assert not any(line.startswith("--cpus-per-task") for line in lines)
    assert "scontrol requeue" not in script.render()


def test_run_dir_is_pinned_and_torchrun_line():
    text = _script(TINY).render()
    assert f"export PITSTOP_RUN_DIR={RUN_DIR}\n" in text
    assert (f'srun --kill-on-bad-exit=1 --immediate=60 --nodes=2 --ntasks=2 --ntasks-per-node=1 --nodelist="$step_nodes" '
            f"--cpus-per-task=2 {TORCHRUN} \\\n"
            "    --nnodes=2 \\\n    --nproc-per-node=2 \\\n"
            "    --rdzv-backend=c10d \\\n" '    --rdzv-endpoint="$rdzv_host:29500" \\\n'
            '    --rdzv-id="$SLURM_JOB_ID.$attempt" \\\n') in text
    assert '-m pitstop.recipes.train "$PITSTOP_RUN_DIR" &' in text
    assert '"$python" -m pitstop.recipes.allocation "$SLURM_JOB_ID" "$train_nodes"' in text
    assert "python=/opt/pitstop/venv/bin/python\n" in text


def test_spare_nodes_are_allocated_but_the_step_keeps_its_size():
    script = _script(TINY, ["cluster.spare_nodes=1"])
    lines = _directives(script)
    assert "--nodes=2-3" in lines and "--no-kill" in lines
    assert not any(line.startswith("--ntasks") for line in lines)  # Slurm fills a range only so
    assert "train_nodes=2\n" in script.render()
    assert "--nnodes=2 " in script.render() and "--nodes=2 --ntasks=2" in script.render()


def test_the_srun_launcher_starts_every_rank_itself():
    text = _script(TINY, ["cluster.launcher=srun"]).render()
    assert ('srun --kill-on-bad-exit=1 --immediate=60 --nodes=2 --ntasks=4 --ntasks-per-node=2 --nodelist="$step_nodes" '
            "--cpus-per-task=1 /opt/pitstop/venv/bin/python \\\n"
            '    -m pitstop.recipes.train "$PITSTOP_RUN_DIR" &') in text
    assert 'export PITSTOP_LAUNCHER=srun MASTER_ADDR="$rdzv_host" MASTER_PORT=29500' in text
    assert "torchrun" not in text.split("set -uo pipefail")[1]


def test_an_unknown_launcher_is_refused():
    with pytest.raises(RecipeError, match="cluster.launcher.*torchrun, srun"):
        compose(TINY, ["cluster.launcher=mpirun"])


def test_default_torchrun_is_beside_this_python():
    assert default_torchrun() == Path(sys.executable).absolute().parent / "torchrun"
    script = SbatchScript.from_config(compose(TINY), RUN_DIR, chdir=CHDIR)
    assert script.torchrun == default_torchrun()


def test_relative_run_dir_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = SbatchScript.from_config(compose(TINY), Path("runs/a"), torchrun=TORCHRUN)
    assert script.run_dir == tmp_path / "runs" / "a" and script.chdir == tmp_path


@pytest.mark.parametrize("bad", ["/tmp/with space", "/tmp/100%"])
def test_run_dir_sbatch_cannot_take_is_refused(bad):
    with pytest.raises(RecipeError, match="sbatch cannot take a path"):
        SbatchScript.from_config(compose(TINY), Path(bad), chdir=CHDIR, torchrun=TORCHRUN)


# --- the script's behaviour, run by bash with stand-in srun, scontrol and python -------
# The stand-in python answers for pitstop.recipes.allocation; the stand-in srun plays the
# runtime: it writes `last-exit` for its attempt when it ends with status 0, fails the
# first FAKE_FAILS starts (the first FAKE_REFUSED as srun does when Slurm will not create
# the step: with SLURM_EXIT_ERROR's status), and with FAKE_NO_EXIT_LINE ends 0 without saying it finished
# (as srun does for a step that Slurm ended on a node failure).

FAKE_SRUN = """#!/bin/bash
if [[ "$1" == --overlap ]]; then  # a warm server: lives a while, or dies at once on FAKE_WARM_DIES
    echo "$@" >> "$FAKE_LOG/warm.args"
    [[ "$*" == *"--nodelist=${FAKE_WARM_DIES:-none} "* ]] && exit 1
    for i in $(seq 100); do sleep 0.05; done
    exit 0
fi
echo "$@" >> "$FAKE_LOG/srun.args"
echo "$PITSTOP_ATTEMPT" >> "$FAKE_LOG/srun.attempts"
echo "${PITSTOP_WARM_WAIT:-}" >> "$FAKE_LOG/step.warm_wait"
if (( $(wc -l < "$FAKE_LOG/srun.attempts") <= ${FAKE_REFUSED:-0} )); then  # as srun fails to create a step
    echo "srun: error: Unable to create step for job $SLURM_JOB_ID: Requested nodes are busy" >&2
    exit "$SLURM_EXIT_ERROR"
fi
trap 'echo USR1 > "$FAKE_LOG/step.signal"; exit 1' USR1
trap 'echo TERM > "$FAKE_LOG/step.signal"; exit 143' TERM
touch "$FAKE_LOG/step.started"
[[ -n "${FAKE_NO_HEARTBEAT:-}" ]] || echo "{\"step\": 1, \"attempt\": $PITSTOP_ATTEMPT}" > "$PITSTOP_RUN_DIR/heartbeat.json"
sleep "${FAKE_STEP_DELAY:-0}"
if [[ -n "${FAKE_STEP_WAIT:-}" ]]; then
    while :; do sleep 0.05; done
fi
starts=$(wc -l < "$FAKE_LOG/srun.attempts")
if (( starts <= ${FAKE_FAILS:-0} )); then
    exit 1
fi
status="${FAKE_STEP_STATUS:-0}"
if [[ "$status" == 0 && -z "${FAKE_NO_EXIT_LINE:-}" ]]; then
    echo "$PITSTOP_ATTEMPT finished 12" > "$PITSTOP_RUN_DIR/last-exit"
fi
exit "$status"
"""

FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_LOG/scontrol.calls"
"""

FAKE_PYTHON = """#!/bin/bash
if [[ "$*" == *--keep* ]]; then  # the background keeper: the usable nodes
    echo "$@" >> "$FAKE_LOG/keeper.calls"
    echo "${FAKE_USABLE:-node-a,node-b}"
    exit 0
fi
echo "$@" >> "$FAKE_LOG/python.calls"
calls=$(wc -l < "$FAKE_LOG/python.calls")
if [[ -n "${FAKE_PLACEMENT_STATUS:-}" ]] && (( calls >= ${FAKE_PLACEMENT_FROM:-1} )); then
    echo "pitstop: job $3 cannot run its next step in its allocation: 1 usable node(s) left" >&2
    exit "$FAKE_PLACEMENT_STATUS"
fi
echo "${FAKE_PLACEMENT:-node-a,node-b 10.1.2.3}"
"""


def _fake_bin(bin_dir: Path, **scripts: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


@pytest.fixture()
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_bin(bin_dir, srun=FAKE_SRUN, scontrol=FAKE_SCONTROL, python=FAKE_PYTHON)
    log = tmp_path / "log"
    log.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = SbatchScript.from_config(compose(TINY, ["cluster.max_restarts=2"]), run_dir, chdir=tmp_path,
                                      torchrun=TORCHRUN)
    script_path = tmp_path / "job.sbatch"
    script_path.write_text(replace(script, python=bin_dir / "python").render())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "node-[a-c]"}
    env.pop("SLURM_RESTART_COUNT", None)
    return script_path, log, env


def _start(script_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(script_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(script_path: Path, env: dict, **more: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script_path)], env={**env, **more}, capture_output=True,
                          text=True, timeout=30)


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _attempts(script_path: Path) -> list[dict]:
    from pitstop.rundir import read_attempts

    return read_attempts(script_path.parent / "run")


def _calls(log: Path, name: str) -> str:
    path = log / f"{name}.calls"
    return path.read_text() if path.exists() else ""


def test_a_finished_step_ends_the_job_and_is_recorded(fake_slurm):
    script_path, log, env = fake_slurm
    result = _run(script_path, env)
    assert result.returncode == 0, result.stderr
    assert "training finished at step 12" in result.stderr
    args = (log / "srun.args").read_text()
    assert "--nodes=2 --ntasks=2 --ntasks-per-node=1 --nodelist=node-a,node-b" in args
    assert f"{TORCHRUN} --nnodes=2 --nproc-per-node=2" in args
    assert "--rdzv-endpoint=10.1.2.3:29500 --rdzv-id=4242.0" in args
    assert args.strip().endswith(f"-m pitstop.recipes.train {script_path.parent / 'run'}")
    assert _calls(log, "python").split() == ["-m", "pitstop.recipes.allocation", "4242", "2"]
    records = _attempts(script_path)
    assert [(r["event"], r["attempt"]) for r in records] == [("start", 0), ("end", 0)]
    assert records[0]["nodes"] == "node-a,node-b" and records[1]["status"] == 0
    assert records[0]["job_id"] == "4242" and records[0]["time"] <= records[1]["time"]
    assert "requeue" not in _calls(log, "scontrol")


def test_a_failed_step_starts_again_in_the_allocation(fake_slurm):
    script_path, log, env = fake_slurm
    result = _run(script_path, env, FAKE_FAILS="2")
    assert result.returncode == 0, result.stderr
    assert (log / "srun.attempts").read_text().split() == ["0", "1", "2"]
    assert "--rdzv-id=4242.2" in (log / "srun.args").read_text().splitlines()[-1]
    assert "starting it again in the allocation from the newest checkpoint (restart 2 of at most 2)" in result.stderr
    assert [r["status"] for r in _attempts(script_path) if r["event"] == "end"] == [1, 1, 0]
    assert "requeue" not in _calls(log, "scontrol")  # no queue wait, no new allocation


def test_a_warm_start_keeps_a_server_on_every_usable_node(tmp_path):
    """cluster.warm_start: before each attempt the loop starts a server on every usable
    node the placement names, spares too (deferred: it imports once the step trains),
    that has none alive (one that died is started again), and the step's ranks are the
    warm client, told to wait for a server that is still starting."""
    bin_dir, log, run_dir = tmp_path / "bin", tmp_path / "log", tmp_path / "run"
    _fake_bin(bin_dir, srun=FAKE_SRUN, scontrol=FAKE_SCONTROL, python=FAKE_PYTHON)
    log.mkdir()
    run_dir.mkdir()
    cfg = compose(TINY, ["cluster.max_restarts=2", "cluster.launcher=srun", "cluster.warm_start=true"])
    script_path = tmp_path / "job.sbatch"
    script = SbatchScript.from_config(cfg, run_dir, chdir=tmp_path, torchrun=TORCHRUN)
    script_path.write_text(replace(script, python=bin_dir / "python").render())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "SLURM_JOB_ID": "4242", "FAKE_FAILS": "1", "FAKE_WARM_DIES": "node-b",
           "FAKE_PLACEMENT": "node-a,node-b 10.1.2.3 node-a,node-b,node-c", "FAKE_STEP_DELAY": "0.6"}
    env.pop("SLURM_RESTART_COUNT", None)
    result = _run(script_path, env)
    assert result.returncode == 0, result.stderr
    servers = [re.search(r"--nodelist=(\S+)", line).group(1) for line in (log / "warm.args").read_text().splitlines()]
    assert sorted(servers) == ["node-a", "node-b", "node-b", "node-c"]  # node-b's died: started again
    for line in (log / "warm.args").read_text().splitlines():  # the spare's imports wait for the step
        deferred = "--nodelist=node-c " in line
        assert line.endswith(f"{bin_dir / 'python'} -m pitstop.recipes.warm serve{' --defer' * deferred}"), line
    steps = (log / "srun.args").read_text().splitlines()
    assert len(steps) == 2
    assert all(line.endswith(f"-m pitstop.recipes.warm run pitstop.recipes.train {run_dir}") for line in steps)
    assert all(" --overlap " in line for line in steps)  # the step overlaps the servers, as they overlap it
    # Placement resizes around the servers that stay (only the given-back nodes' stop).
    assert all(line.endswith(" --overlap") for line in (log / "python.calls").read_text().splitlines())
    assert (log / "step.warm_wait").read_text().split() == [str(WARM_WAIT_S)] * 2
    assert not (log / "keeper.calls").exists()  # the restarts replace used spares: no keeper


def test_a_warm_start_needs_the_srun_launcher():
    with pytest.raises(RecipeError, match="cluster.warm_start=true: needs cluster.launcher: srun"):
        compose(TINY, ["cluster.warm_start=true"])


def test_steps_slurm_refuses_twice_running_requeue_the_job(fake_slurm):
    """srun could not create the step twice (a job Slurm 22.05 miscounted after resizes
    is refused every step, forever): a fresh allocation is the way out, not the rest of
    the restarts."""
    script_path, log, env = fake_slurm
    result = _run(script_path, env, FAKE_REFUSED="3")
    assert result.returncode == 0, result.stderr
    assert ("srun could not start the step 2 times running (status 75: Slurm refused it); "
            "requeueing job 4242") in result.stderr
    assert "requeue 4242" in _calls(log, "scontrol")
    assert len((log / "srun.attempts").read_text().split()) == 2


def test_one_refused_step_is_only_started_again(fake_slurm):
    """A step refused once (the last one's CPUs were still being freed) and a training
    failure after it are not two refusals in a row: no requeue."""
    script_path, log, env = fake_slurm
    result = _run(script_path, env, FAKE_REFUSED="1", FAKE_FAILS="2")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in _attempts(script_path) if r["event"] == "end"] == [75, 1, 0]
    assert "requeue" not in _calls(log, "scontrol")


def test_a_step_that_ends_0_without_finishing_is_started_again(fake_slurm):
    script_path, log, env = fake_slurm
    result = _run(script_path, env, FAKE_NO_EXIT_LINE="1")
    assert result.returncode == 1, result.stderr  # never finished: the restarts run out
    assert (log / "srun.attempts").read_text().split() == ["0", "1", "2"]
    assert "has used its 2 restarts" in result.stderr


def test_a_step_that_keeps_failing_stops_at_the_bound(fake_slurm):
    script_path, log, env = fake_slurm
    result = _run(script_path, env, FAKE_STEP_STATUS="5")
    assert result.returncode == 5
    assert "the step failed (status 5) and job 4242 has used its 2 restarts" in result.stderr
    assert len((log / "srun.attempts").read_text().split()) == 3


def test_too_few_healthy_nodes_requeues_the_job(fake_slurm):
    script_path, log, env = fake_slurm
    result = _run(script_path, env, FAKE_PLACEMENT_STATUS="4")
    assert result.returncode == 0, result.stderr
    assert "requeue 4242" in _calls(log, "scontrol")
    assert "too few healthy nodes left in the allocation; requeueing job 4242" in result.stderr
    assert not (log / "srun.args").exists()


def test_the_last_restart_allowed_may_be_a_requeue(fake_slurm):
    """max_restarts=2: two steps fail in the allocation, then too few nodes are left for
    the third start, restart 2 of at most 2: it is allowed, so the job requeues."""
    script_path, log, env = fake_slurm
    result = _run(script_path, env, FAKE_FAILS="2", FAKE_PLACEMENT_STATUS="4", FAKE_PLACEMENT_FROM="3")
    assert result.returncode == 0, result.stderr
    assert "requeue 4242" in _calls(log, "scontrol")
    assert "(restart 2 of at most 2)" in result.stderr


def test_an_unreachable_slurm_stops_the_run_after_retries(fake_slurm):
    script_path, log, env = fake_slurm
    result = _run(script_path, env, FAKE_PLACEMENT_STATUS="1")
    assert result.returncode == 1
    assert len(_calls(log, "python").splitlines()) == 3
    assert "could not ask Slurm for the allocation's nodes" in result.stderr


@pytest.mark.parametrize("sig, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_signal_is_forwarded_to_the_step(fake_slurm, sig, requeued):
    script_path, log, env = fake_slurm
    process = _start(script_path, {**env, "FAKE_STEP_WAIT": "1"})
    try:
        _wait_for(log / "step.started")
        time.sleep(0.2)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert (log / "step.signal").read_text().strip() == sig.name.removeprefix("SIG")
    calls = _calls(log, "scontrol")
    if requeued:
        assert "requeue 4242" in calls, stderr
        assert process.returncode == 0
        assert "requeueing job 4242" in stderr
    else:
        assert "requeue" not in calls
        assert process.returncode == 143
    assert len((log / "srun.attempts").read_text().split()) == 1  # a signal is no fault


def test_restarts_past_the_bound_stop_before_srun(fake_slurm):
    script_path, log, env = fake_slurm
    result = _run(script_path, env, SLURM_RESTART_COUNT="3")
    assert result.returncode == 3
    assert "restarted 3 times, more than cluster.max_restarts=2" in result.stderr
    assert not (log / "srun.args").exists()
    ok = _run(script_path, env, SLURM_RESTART_COUNT="2")
    assert ok.returncode == 0 and (log / "srun.args").exists()


def test_starts_of_earlier_runs_count_against_the_bound(fake_slurm):
    """A requeued job runs the script again on the same run directory: the starts it
    made before count, so a run that keeps failing cannot restart forever."""
    script_path, log, env = fake_slurm
    first = _run(script_path, env, FAKE_STEP_STATUS="5")
    assert first.returncode == 5
    again = _run(script_path, env, SLURM_RESTART_COUNT="1")
    assert again.returncode == 3
    assert "started 3 times, more than cluster.max_restarts=2" in again.stderr


# --- the whole signal chain, with the real torchrun and the real runtime on the CPU ----

PASS_THROUGH_SRUN = """#!/bin/bash
echo "$@" > "$FAKE_LOG/srun.args"
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""



def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_usr1_reaches_the_ranks_through_torchrun_and_the_job_requeues(tmp_path):
    """Slurm's B:USR1 warning -> the batch shell -> torchrun (--signals-to-handle) -> every
    rank saves a complete checkpoint -> `scontrol requeue`. srun is a pass-through here."""
    pytest.importorskip("torch")
    pytest.importorskip("pitstop.recipes.train")
    from pitstop.recipes.launch import render_to
    from pitstop.rundir import latest_complete_checkpoint, read_heartbeat

    bin_dir, log, run_dir = tmp_path / "bin", tmp_path / "log", tmp_path / "run"
    bin_dir.mkdir()
    log.mkdir()
    _fake_bin(bin_dir, srun=PASS_THROUGH_SRUN, scontrol=FAKE_SCONTROL, python=FAKE_PYTHON)
    cfg = compose(TINY, ["cluster.nodes=1", "trainer.max_steps=100000",
                         "trainer.checkpoint.interval=100000", "trainer.step_delay=0.1",
                         "trainer.tensorboard=false", f"cluster.rdzv_port={_free_port()}"])
    render_to(cfg, run_dir, chdir=tmp_path)
    job = run_dir / "job.sbatch"
    job.write_text(re.sub(r"^python=.*$", f"python={bin_dir / 'python'}", job.read_text(), flags=re.M))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "SLURM_JOB_ID": "77", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost",
           "FAKE_PLACEMENT": "localhost 127.0.0.1"}
    env.pop("SLURM_RESTART_COUNT", None)
    process = subprocess.Popen(["bash", str(run_dir / "job.sbatch")], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while (read_heartbeat(run_dir) or {}).get("step", 0) < 2:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training never reached step 2"
            time.sleep(0.2)
        process.send_signal(signal.SIGUSR1)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "requeue 77" in (log / "scontrol.calls").read_text(), stderr[-3000:]
    assert process.returncode == 0, stderr[-3000:]
    saved = latest_complete_checkpoint(run_dir)
    assert saved is not None and saved.step >= 2, stderr[-3000:]
