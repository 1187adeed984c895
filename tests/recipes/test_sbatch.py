"""The sbatch script: golden files for the collection, its directives, and its signal,
requeue and restart-bound logic run by bash against stand-in `srun` and `scontrol`
scripts (no Slurm here: the lead tests real submissions on the testbed).

`PITSTOP_UPDATE_GOLDEN=1 pytest tests/recipes/test_sbatch.py` rewrites the golden files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pitstop.recipes.compose import compose, recipe_names
from pitstop.recipes.errors import RecipeError
from pitstop.recipes.sbatch import SbatchScript, default_torchrun

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
    assert (f"srun --kill-on-bad-exit=1 --cpus-per-task=2 {TORCHRUN} \\\n"
            '    --nnodes="$SLURM_NNODES" \\\n    --nproc-per-node=2 \\\n'
            "    --rdzv-backend=c10d \\\n" '    --rdzv-endpoint="$rdzv_host:29500" \\\n'
            '    --rdzv-id="$SLURM_JOB_ID" \\\n') in text
    assert '-m pitstop.recipes.train "$PITSTOP_RUN_DIR" &' in text
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1' in text


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


# --- the script's behaviour, run by bash with stand-in srun and scontrol ---------------

FAKE_SRUN = """#!/bin/bash
echo "$@" > "$FAKE_LOG/srun.args"
trap 'echo USR1 > "$FAKE_LOG/step.signal"; exit 1' USR1
trap 'echo TERM > "$FAKE_LOG/step.signal"; exit 143' TERM
touch "$FAKE_LOG/step.started"
if [[ -n "${FAKE_STEP_WAIT:-}" ]]; then
    while :; do sleep 0.05; done
fi
exit "${FAKE_STEP_STATUS:-0}"
"""

FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_LOG/scontrol.calls"
if [[ "$1 $2" == "show hostnames" ]]; then
    echo "${FAKE_FIRST_HOST:-node-a}"
    echo node-b
elif [[ "$1 $2" == "show node" ]]; then
    echo "NodeName=$3 Arch=x86_64 CoresPerSocket=1"
    echo "   NodeAddr=10.1.2.3 NodeHostName=$3 Version=24.05"
fi
"""


@pytest.fixture()
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    log.mkdir()
    script_path = tmp_path / "job.sbatch"
    script_path.write_text(_script(TINY, ["cluster.max_restarts=2"]).render())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]"}
    env.pop("SLURM_RESTART_COUNT", None)
    return script_path, log, env


def _start(script_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(script_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_plain_run_starts_torchrun_on_the_first_host_and_exits_with_the_step(fake_slurm):
    script_path, log, env = fake_slurm
    # With its restarts used up, a failed step ends the job with the step's status.
    result = subprocess.run(["bash", str(script_path)],
                            env={**env, "FAKE_STEP_STATUS": "5", "SLURM_RESTART_COUNT": "2"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 5
    assert "has used its 2 restarts" in result.stderr
    args = (log / "srun.args").read_text()
    assert f"{TORCHRUN} --nnodes=2 --nproc-per-node=2" in args
    # node-a does not resolve here, so the rendezvous is at its NodeAddr.
    assert "--rdzv-endpoint=10.1.2.3:29500 --rdzv-id=4242" in args
    assert args.strip().endswith(f"-m pitstop.recipes.train {RUN_DIR}")
    assert "requeue" not in (log / "scontrol.calls").read_text()


def test_a_failed_step_requeues_while_restarts_remain(fake_slurm):
    script_path, log, env = fake_slurm
    result = subprocess.run(["bash", str(script_path)],
                            env={**env, "FAKE_STEP_STATUS": "1", "SLURM_RESTART_COUNT": "1"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "requeue 4242" in (log / "scontrol.calls").read_text()
    assert "restart 2 of at most 2" in result.stderr


def test_a_first_host_that_resolves_is_used_by_name(fake_slurm):
    script_path, log, env = fake_slurm
    result = subprocess.run(["bash", str(script_path)], env={**env, "FAKE_FIRST_HOST": "localhost"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "--rdzv-endpoint=localhost:29500" in (log / "srun.args").read_text()
    assert "show node" not in (log / "scontrol.calls").read_text()


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
    calls = (log / "scontrol.calls").read_text()
    if requeued:
        assert "requeue 4242" in calls, stderr
        assert process.returncode == 0
        assert "requeueing job 4242" in stderr
    else:
        assert "requeue" not in calls
        assert process.returncode == 143


def test_restarts_past_the_bound_stop_before_srun(fake_slurm):
    script_path, log, env = fake_slurm
    result = subprocess.run(["bash", str(script_path)], env={**env, "SLURM_RESTART_COUNT": "3"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "restarted 3 times, more than cluster.max_restarts=2" in result.stderr
    assert not (log / "srun.args").exists()
    ok = subprocess.run(["bash", str(script_path)], env={**env, "SLURM_RESTART_COUNT": "2"},
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and (log / "srun.args").exists()


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
    for name, text in (("srun", PASS_THROUGH_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    cfg = compose(TINY, ["cluster.nodes=1", "trainer.max_steps=100000",
                         "trainer.checkpoint.interval=100000", "trainer.step_delay=0.1",
                         "trainer.tensorboard=false", f"cluster.rdzv_port={_free_port()}"])
    render_to(cfg, run_dir, chdir=tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "SLURM_JOB_ID": "77", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost",
           "FAKE_FIRST_HOST": "localhost"}
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
