"""Fixtures for the training runtime's tests: a tiny resolved config in a run directory,
and real torchrun launches of `python -m pitstop.recipes.train` with deadlines."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pitstop import rundir

TINY_CONFIG = {
    "name": "test-tiny",
    "description": "a few hundred thousand parameters, for tests",
    "hardware": "any CPU",
    "task": "pretrain",
    "model": {"family": "llama", "dim": 48, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
              "ffn_dim": 128, "vocab_size": 256, "max_seq_len": 64, "rope_theta": 10000.0,
              "norm_eps": 1.0e-5, "n_experts": 0, "experts_per_token": 2, "sliding_window": None,
              "init_from": None},
    "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["wq", "wv"]},
    "data": {"source": "stdlib", "path": None, "seq_len": 32, "micro_batch_size": 4, "seed": 1234},
    "optimizer": {"lr": 3.0e-3, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.1,
                  "grad_clip": 1.0},
    "schedule": {"warmup_steps": 3, "min_lr_ratio": 0.1},
    "trainer": {"max_steps": 12, "seed": 0, "accelerator": "cpu", "precision": "fp32",
                "log_every": 1, "tensorboard": False,
                "checkpoint": {"interval": 4, "keep": 2, "async": True}, "step_delay": 0.0},
    "parallel": {"data": -1, "fsdp": 1, "tensor": 1, "context": 1, "expert": 1},
    "cluster": {"nodes": 1, "spare_nodes": 0, "procs_per_node": 2, "gpus_per_node": 0, "cpus_per_task": None,
                "partition": None, "reservation": None, "time": "00:10:00", "exclusive": False,
                "requeue": True, "max_restarts": 3, "signal_seconds": 60, "rdzv_port": 29500,
                "launcher": "torchrun", "warm_start": False},
    "run": {"dir": None, "root": "./runs"},
}


def merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def stdlib_tokens(tmp_path_factory) -> Path:
    """The stdlib corpus, built once per session and shared by every run."""
    from pitstop.recipes import data

    return data.stdlib_corpus(tmp_path_factory.mktemp("corpus"), cap_bytes=512 * 1024)


def train_env(restart_count: int, extra: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SLURM", "PITSTOP_TEST", "TORCHELASTIC"))
           and key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"OMP_NUM_THREADS": "1", "SLURM_RESTART_COUNT": str(restart_count), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class TrainingRuns:
    """Run directories with a tiny config, and real torchrun launches on them."""

    def __init__(self, root: Path, tokens: Path):
        self.root = root
        self.tokens = tokens
        self.started: list[subprocess.Popen] = []

    def make(self, name: str = "run", changes: dict | None = None) -> Path:
        run_dir = self.root / name
        run_dir.mkdir()
        config = merge(TINY_CONFIG, {"data": {"source": "tokens", "path": str(self.tokens)}})
        config = merge(config, changes or {})
        (run_dir / rundir.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        return run_dir

    @staticmethod
    def command(run_dir: Path, nproc: int = 2) -> list[str]:
        """torchrun for several ranks; one rank runs alone, as a world of one without torchrun."""
        if nproc == 1:
            return [sys.executable, "-m", "pitstop.recipes.train", str(run_dir)]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", "pitstop.recipes.train", str(run_dir)]

    def start(self, run_dir: Path, nproc: int = 2, restart_count: int = 0, **env: str) -> subprocess.Popen:
        with open(run_dir / f"train-{restart_count}.log", "ab") as log:
            proc = subprocess.Popen(self.command(run_dir, nproc), stdout=log, stderr=subprocess.STDOUT,
                                    env=train_env(restart_count, env), start_new_session=True)
        self.started.append(proc)
        return proc

    def kill_leftovers(self) -> None:
        """Whatever a failed test left running: its whole process group, by id."""
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def finish(self, proc: subprocess.Popen, run_dir: Path, timeout: float = 120) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"training did not finish in {timeout}s; log:\n{self.logs(run_dir)}")

    def run(self, run_dir: Path, nproc: int = 2, restart_count: int = 0, timeout: float = 120, **env: str) -> int:
        return self.finish(self.start(run_dir, nproc, restart_count, **env), run_dir, timeout)

    def run_captured(self, run_dir: Path, preexec_fn=None, timeout: float = 120) -> subprocess.CompletedProcess:
        """One rank, alone, with its stderr captured."""
        return subprocess.run(self.command(run_dir, nproc=1), capture_output=True, text=True,
                              timeout=timeout, preexec_fn=preexec_fn, env=train_env(0, {}))

    @staticmethod
    def logs(run_dir: Path) -> str:
        return "\n".join(path.read_text(errors="replace")[-6000:] for path in sorted(run_dir.glob("train-*.log")))

    def wait_for(self, condition, timeout: float, what: str, proc: subprocess.Popen, run_dir: Path):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if proc.poll() is not None:
                pytest.fail(f"training exited ({proc.returncode}) before {what}; log:\n{self.logs(run_dir)}")
            time.sleep(0.02)
        pytest.fail(f"timed out after {timeout}s waiting for {what}; log:\n{self.logs(run_dir)}")

    @staticmethod
    def heartbeat_step(run_dir: Path) -> int:
        beat = rundir.read_heartbeat(run_dir)
        return beat["step"] if beat else 0

    @staticmethod
    def losses(run_dir: Path, restart_count: int | None = None) -> dict[int, float]:
        return {record["step"]: record["loss"] for record in rundir.iter_progress(run_dir)
                if restart_count is None or record["restart_count"] == restart_count}

    @staticmethod
    def complete_steps(run_dir: Path) -> list[int]:
        return [c.step for c in rundir.list_checkpoints(run_dir) if c.complete]


@pytest.fixture
def runs(tmp_path, stdlib_tokens):
    training = TrainingRuns(tmp_path, stdlib_tokens)
    yield training
    training.kill_leftovers()


class Uninterrupted:
    """A 2-rank run of `steps` steps that nothing interrupts; `changes` is its config."""

    steps = 20
    changes = {"trainer": {"max_steps": 20, "checkpoint": {"interval": 4, "keep": 2, "async": True},
                           "step_delay": 0.1}}

    def __init__(self, losses: dict[int, float]):
        self.losses = losses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, stdlib_tokens) -> Uninterrupted:
    runs = TrainingRuns(tmp_path_factory.mktemp("uninterrupted"), stdlib_tokens)
    fast = merge(Uninterrupted.changes, {"trainer": {"step_delay": 0.0}})
    run_dir = runs.make("baseline", fast)
    try:
        assert runs.run(run_dir) == 0, runs.logs(run_dir)
    finally:
        runs.kill_leftovers()
    losses = runs.losses(run_dir)
    assert sorted(losses) == list(range(1, Uninterrupted.steps + 1))
    return Uninterrupted(losses)
