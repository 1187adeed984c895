"""The runtime as Slurm runs it: real torchrun, two gloo ranks on the CPU, real signals
and real crashes; a restart on the same run directory must continue exactly."""

from __future__ import annotations

import os
import resource
import signal
import subprocess

import psutil
import pytest
import yaml

from pitstop import rundir
from pitstop.recipes.checkpoint import CRASH_DURING_SAVE_ENV, CRASH_DURING_SAVE_EXIT


def assert_same_losses(resumed: dict[int, float], uninterrupted, after_step: int):
    assert sorted(resumed) == list(range(after_step + 1, uninterrupted.steps + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted.losses[step], rel=1e-6, abs=0), f"step {step}"


def rank_pid(proc: subprocess.Popen, rank: int) -> int:
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no process of rank {rank} under torchrun {proc.pid}")


def test_short_run_learns_and_leaves_checkpoints_heartbeat_and_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = runs.make(changes={"trainer": {"max_steps": 12, "tensorboard": True,
                                             "checkpoint": {"interval": 4, "keep": 2, "async": True}}})
    assert runs.run(run_dir, SLURM_JOB_ID="4242", SLURMD_NODENAME="node7") == 0, runs.logs(run_dir)

    progress = list(rundir.iter_progress(run_dir))
    assert [r["step"] for r in progress] == list(range(1, 13))
    assert set(progress[0]) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "step_time",
                                "restart_count", "attempt", "time"}
    first, last = [r["loss"] for r in progress[:3]], [r["loss"] for r in progress[-3:]]
    assert sum(last) / 3 < sum(first) / 3 - 0.3
    assert progress[2]["lr"] == pytest.approx(3e-3)  # warmup of 3 steps reached the peak
    assert progress[-1]["lr"] < progress[2]["lr"]

    assert runs.complete_steps(run_dir) == [8, 12]
    assert [c.step for c in rundir.list_checkpoints(run_dir)] == [8, 12]

    beat = rundir.read_heartbeat(run_dir)
    assert beat["step"] == 12 and beat["job_id"] == "4242" and beat["node"] == "node7"
    assert beat["restart_count"] == 0 and beat["step_time"] > 0 and beat["pid"] > 0
    assert rundir.read_last_exit(run_dir) == (0, "finished", 12)  # what the batch script trusts

    events = EventAccumulator(str(run_dir / rundir.TENSORBOARD))
    events.Reload()
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == list(range(1, 13))
    assert logged[-1].value == pytest.approx(progress[-1]["loss"], rel=1e-6)


def test_sigterm_to_torchrun_saves_and_the_restart_continues_exactly(runs, uninterrupted):
    run_dir = runs.make(changes=uninterrupted.changes)
    proc = runs.start(run_dir)
    runs.wait_for(lambda: runs.complete_steps(run_dir) and runs.heartbeat_step(run_dir) >= 6,
                  60, "a checkpoint and step 6", proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    runs.finish(proc, run_dir, timeout=60)
    stopped_at = runs.complete_steps(run_dir)[-1]
    assert stopped_at >= 6 and stopped_at == runs.heartbeat_step(run_dir)
    assert "stop requested by SIGTERM" in runs.logs(run_dir)

    assert runs.run(run_dir, restart_count=1) == 0, runs.logs(run_dir)
    assert f"resumed from {rundir.checkpoint_dir(run_dir, stopped_at)}" in runs.logs(run_dir)
    assert_same_losses(runs.losses(run_dir, restart_count=1), uninterrupted, stopped_at)
    assert sorted(runs.losses(run_dir)) == list(range(1, uninterrupted.steps + 1))


def test_sigusr1_to_one_rank_stops_every_rank_with_exit_0(runs, uninterrupted):
    run_dir = runs.make(changes=uninterrupted.changes)
    proc = runs.start(run_dir)
    runs.wait_for(lambda: runs.heartbeat_step(run_dir) >= 3, 60, "step 3", proc, run_dir)
    os.kill(rank_pid(proc, 1), signal.SIGUSR1)
    assert runs.finish(proc, run_dir, timeout=60) == 0, runs.logs(run_dir)
    stopped_at = runs.heartbeat_step(run_dir)
    assert stopped_at < uninterrupted.steps and runs.complete_steps(run_dir)[-1] == stopped_at

    assert runs.run(run_dir, restart_count=1) == 0, runs.logs(run_dir)
    assert_same_losses(runs.losses(run_dir, restart_count=1), uninterrupted, stopped_at)


def test_a_rank_killed_mid_run_resumes_from_the_newest_complete_checkpoint(runs, uninterrupted):
    run_dir = runs.make(changes=uninterrupted.changes)
    proc = runs.start(run_dir)
    runs.wait_for(lambda: 8 in runs.complete_steps(run_dir) and runs.heartbeat_step(run_dir) >= 10,
                  60, "checkpoint 8 and step 10", proc, run_dir)
    os.kill(rank_pid(proc, 1), signal.SIGKILL)
    assert runs.finish(proc, run_dir, timeout=90) != 0
    newest = runs.complete_steps(run_dir)[-1]
    assert newest >= 8

    assert runs.run(run_dir, restart_count=1) == 0, runs.logs(run_dir)
    assert f"resumed from {rundir.checkpoint_dir(run_dir, newest)}" in runs.logs(run_dir)
    assert_same_losses(runs.losses(run_dir, restart_count=1), uninterrupted, newest)


def test_a_crash_inside_an_async_save_falls_back_to_the_previous_checkpoint(runs, uninterrupted):
    run_dir = runs.make(changes=uninterrupted.changes)
    code = runs.run(run_dir, **{CRASH_DURING_SAVE_ENV: "8"})
    assert code != 0
    assert CRASH_DURING_SAVE_EXIT != 0 and f"exitcode  : {CRASH_DURING_SAVE_EXIT}" in runs.logs(run_dir)
    abandoned = rundir.checkpoint_dir(run_dir, 8)
    assert (abandoned / ".metadata").exists() and not (abandoned / rundir.COMPLETE_MARKER).exists()
    assert runs.complete_steps(run_dir) == [4]

    assert runs.run(run_dir, restart_count=1) == 0, runs.logs(run_dir)
    assert f"resumed from {rundir.checkpoint_dir(run_dir, 4)}" in runs.logs(run_dir)
    assert_same_losses(runs.losses(run_dir, restart_count=1), uninterrupted, 4)
    assert runs.complete_steps(run_dir) == [16, 20]


def test_lora_fine_tunes_a_local_hugging_face_model_and_resumes_exactly(runs, tmp_path):
    import torch.distributed.checkpoint as dcp

    from pitstop.recipes.lora import write_hf_checkpoint
    from pitstop.recipes.model import ModelConfig, build_model

    pretrained = tmp_path / "pretrained"
    lora = {"task": "lora", "model": {"init_from": str(pretrained)}, "optimizer": {"lr": 1e-2},
            "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.2, "targets": ["wq", "wv", "w2"]},
            "trainer": {"max_steps": 8, "checkpoint": {"interval": 4, "keep": 2, "async": True}}}
    baseline, interrupted = runs.make("baseline", lora), runs.make("interrupted", lora)
    model_section = yaml.safe_load((baseline / rundir.CONFIG).read_text())["model"]
    write_hf_checkpoint(build_model(ModelConfig.from_section(model_section), seed=5), pretrained)

    assert runs.run(baseline, nproc=1) == 0, runs.logs(baseline)
    expected = runs.losses(baseline)
    assert expected[8] < expected[1]
    metadata = dcp.FileSystemReader(str(rundir.checkpoint_dir(baseline, 8))).read_metadata()
    model_keys = {key for key in metadata.state_dict_metadata if key.startswith("model.")}
    assert model_keys and all("lora_" in key for key in model_keys)

    assert runs.run(interrupted, nproc=1, **{CRASH_DURING_SAVE_ENV: "8"}) == CRASH_DURING_SAVE_EXIT
    assert runs.run(interrupted, nproc=1, restart_count=1) == 0, runs.logs(interrupted)
    resumed = runs.losses(interrupted, restart_count=1)
    assert sorted(resumed) == [5, 6, 7, 8]  # dropout draws continue from the restored RNG
    assert all(resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=0) for step in resumed)


def test_mixtral_with_a_sliding_window_trains_on_the_stdlib_corpus(runs):
    run_dir = runs.make(changes={"model": {"family": "mixtral", "n_experts": 4, "experts_per_token": 2,
                                           "sliding_window": 8},
                                 "data": {"source": "stdlib", "path": None},
                                 "trainer": {"max_steps": 6, "checkpoint": {"interval": 3, "keep": 1, "async": True}}})
    assert runs.run(run_dir) == 0, runs.logs(run_dir)
    progress = list(rundir.iter_progress(run_dir))
    assert len(progress) == 6 and progress[-1]["loss"] < progress[0]["loss"]
    assert runs.complete_steps(run_dir) == [6]
    assert [meta.parent.name.startswith("stdlib-") for meta in (run_dir / "data").glob("*/meta.json")] == [True]


def small_disk():
    """Writes past 64 KiB fail with a real OSError, as when the disk is full."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))


def test_a_full_disk_keeps_training_and_exits_3_when_the_last_save_fails(runs):
    run_dir = runs.make(changes={"trainer": {"max_steps": 6, "checkpoint": {"interval": 2, "keep": 2, "async": True}}})
    result = runs.run_captured(run_dir, preexec_fn=small_disk)
    assert result.returncode == 3, result.stderr[-3000:]
    assert [r["step"] for r in rundir.iter_progress(run_dir)] == list(range(1, 7))
    assert "checkpoint step 2 failed" in result.stderr and "checkpoint step 6 failed" in result.stderr
    assert rundir.list_checkpoints(run_dir) == []


def test_a_missing_key_exits_2_naming_the_key(runs):
    run_dir = runs.make()
    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    del config["cluster"]["nodes"]  # a key without a default
    (run_dir / rundir.CONFIG).write_text(yaml.safe_dump(config))
    result = runs.run_captured(run_dir)
    assert result.returncode == 2
    assert "cluster.nodes: missing" in result.stderr


def test_a_run_resolved_before_a_key_existed_loads_with_its_default(runs):
    """A job requeued across an upgrade resumes: keys added since take their defaults."""
    from pitstop.recipes.runconfig import load

    run_dir = runs.make()
    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    del config["cluster"]["launcher"], config["cluster"]["spare_nodes"], config["trainer"]["checkpoint"]["keep"]
    (run_dir / rundir.CONFIG).write_text(yaml.safe_dump(config))
    loaded = load(run_dir)
    assert loaded["cluster"]["launcher"] == "torchrun" and loaded["cluster"]["spare_nodes"] == 0
    assert loaded["trainer"]["checkpoint"]["keep"] == 3


def test_tensor_parallelism_exits_2_as_not_supported(runs):
    run_dir = runs.make(changes={"parallel": {"tensor": 2}})
    result = runs.run_captured(run_dir)
    assert result.returncode == 2
    assert "parallel.tensor" in result.stderr and "not supported by this runtime" in result.stderr
    assert not (run_dir / rundir.PROGRESS).exists()



@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"].pop("n_kv_heads"), "model.n_kv_heads: missing"),
    (lambda c: c["trainer"].update(colour="blue"), "trainer.colour: unknown key"),
    (lambda c: c["model"].update(n_kv_heads=3), "model.n_kv_heads"),
    (lambda c: c["trainer"].update(max_steps=True), "trainer.max_steps: expected int"),
    (lambda c: c["data"].update(seq_len=128), "data.seq_len"),
    (lambda c: c.update(task="lora"), "model.init_from"),
])
def test_config_errors_name_the_key(runs, change, message):
    from pitstop.recipes.runconfig import ConfigError, check

    config = yaml.safe_load((runs.make() / rundir.CONFIG).read_text())
    change(config)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        check(config)


@pytest.mark.parametrize("parallel, world, expected", [
    ({"data": -1, "fsdp": 1}, 4, 4), ({"data": 2, "fsdp": 2}, 4, 2), ({"data": -1, "fsdp": 2}, 4, 2),
])
def test_data_parallel_degree_fills_minus_one_from_the_world(parallel, world, expected):
    from pitstop.recipes.runconfig import data_parallel_degree

    full = {"tensor": 1, "context": 1, "expert": 1, **parallel}
    assert data_parallel_degree(full, world, "gpu") == expected


@pytest.mark.parametrize("parallel, accelerator, message", [
    ({"data": 3, "fsdp": 1}, "cpu", "parallel.data"),
    ({"data": -1, "fsdp": 2}, "cpu", "parallel.fsdp"),
    ({"data": -1, "fsdp": 1, "expert": 2}, "gpu", "parallel.expert: 2 is not supported by this runtime"),
])
def test_impossible_parallel_degrees_are_refused(parallel, accelerator, message):
    from pitstop.recipes.runconfig import ConfigError, data_parallel_degree

    full = {"tensor": 1, "context": 1, "expert": 1, **parallel}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        data_parallel_degree(full, 4, accelerator)


def test_under_srun_the_rank_comes_from_slurms_task_variables():
    from pitstop.recipes.train import rank_from_slurm

    environ = {"PITSTOP_LAUNCHER": "srun", "SLURM_PROCID": "3", "SLURM_NTASKS": "8",
               "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1"}
    rank_from_slurm(environ)
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == ("3", "4", "1")
    torchrun = {"RANK": "0", "SLURM_PROCID": "5", "PITSTOP_LAUNCHER": "srun"}
    rank_from_slurm(torchrun)
    assert torchrun["RANK"] == "0"  # what a launcher set stays
    plain = {"SLURM_PROCID": "5"}
    rank_from_slurm(plain)
    assert "RANK" not in plain
