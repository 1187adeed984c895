"""`python -m pitstop.recipes.train RUN_DIR`: the training runtime every recipe runs.

It reads only RUN_DIR/config.yaml (the resolved recipe, docs/recipe-schema.md), runs
under torchrun or srun (`cluster.launcher`; or alone, as a world of one), resumes from the newest complete
checkpoint, and leaves progress, heartbeat, TensorBoard and checkpoints in RUN_DIR.

SIGUSR1 or SIGTERM on any rank asks for a stop: at the next step boundary the ranks
agree (all_reduce MAX of the flag), save synchronously and exit 0 once the checkpoint is
complete, so Slurm can requeue the job and the next start resumes where this one left.

Exit codes:
    0  max_steps reached, or stopped by SIGUSR1/SIGTERM; the final checkpoint is complete
    1  an unexpected error (traceback on stderr); resume from the last complete checkpoint
    2  the config is missing, malformed or asks for what this runtime does not support
    3  the save before exit failed (e.g. a full disk); older checkpoints are untouched
    99 test-only: PITSTOP_TEST_CRASH_DURING_SAVE=STEP abandoned that save before its marker
A periodic save that fails is logged and training goes on; the next interval tries again.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_SAVE_FAILED = 3

log = logging.getLogger("pitstop.recipes.train")


class StartupClock:
    """Where a start's seconds go before its first step (process launch, imports, process
    group, model, data, checkpoint load), logged once so a restart's cost can be split."""

    def __init__(self) -> None:
        self.last = _process_started_at()
        self.phases: list[tuple[str, float]] = []

    def mark(self, phase: str) -> float:
        now = time.time()
        self.phases.append((phase, max(0.0, now - self.last)))
        self.last = now
        return self.phases[-1][1]

    def describe(self) -> str:
        total = sum(seconds for _, seconds in self.phases)
        return f"start-up {total:.2f} s: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.phases)


def _process_started_at() -> float:
    """This process's start (wall clock), so the interpreter's own start-up is counted."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # no psutil, or /proc unreadable: count from here
        return time.time()


class StopRequest:
    """Set from a signal handler; read at step boundaries."""

    def __init__(self):
        self.signal_name: str | None = None
        self.honoured = False  # the ranks agreed to stop and saved: exit without teardown

    def install(self) -> None:
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at max_steps (step is 0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Distributed:
    """The process group from torchrun's environment, or a world of one without it."""

    def __init__(self, accelerator: str):
        import torch
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if accelerator == "gpu":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
            backend = "cpu:gloo,cuda:nccl"
        else:
            self.device = torch.device("cpu")
            backend = "gloo"
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, device_id=self.device if accelerator == "gpu" else None)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        # Checkpoint collectives run in a background thread: give them their own group.
        self.checkpoint_group = dist.new_group(backend="gloo")

    def any_rank(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value.item() > 0

    def mean(self, value):
        import torch.distributed as dist

        value = value.detach().float().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value.item() / self.world_size

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.checkpoint_group)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(cfg: dict, world: Distributed):
    """The wrapped model, its optimizer and scheduler, and the trainable parameters."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from pitstop.recipes.lora import apply_lora, load_hf_checkpoint
    from pitstop.recipes.model import ModelConfig, build_model

    model_cfg = ModelConfig.from_section(cfg["model"])
    model = build_model(model_cfg, seed=cfg["trainer"]["seed"])
    if cfg["model"]["init_from"]:
        load_hf_checkpoint(model, Path(cfg["model"]["init_from"]))
    if cfg["task"] == "lora":
        lora = cfg["lora"]
        apply_lora(model, lora["targets"], lora["rank"], lora["alpha"], lora["dropout"],
                   seed=cfg["trainer"]["seed"])
    model.to(world.device)
    fsdp = cfg["parallel"]["fsdp"]
    bf16 = cfg["trainer"]["precision"] == "bf16"
    if fsdp > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        replicas = world.world_size // fsdp
        mesh = (init_device_mesh(world.device.type, (replicas, fsdp), mesh_dim_names=("replicate", "shard"))
                if replicas > 1 else init_device_mesh(world.device.type, (fsdp,), mesh_dim_names=("shard",)))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                      reduce_dtype=torch.float32)
        for layer in model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        wrapped = fully_shard(model, mesh=mesh, mp_policy=policy)
    else:
        wrapped = DistributedDataParallel(
            model, device_ids=[world.local_rank] if world.device.type == "cuda" else None,
            forward_sync_buffers=False)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    decayed = [p for p in trainable if p.ndim >= 2]
    undecayed = [p for p in trainable if p.ndim < 2]
    opt = cfg["optimizer"]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": opt["weight_decay"]},
         {"params": undecayed, "weight_decay": 0.0}],
        lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"])
    schedule, max_steps = cfg["schedule"], cfg["trainer"]["max_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule["warmup_steps"], max_steps, schedule["min_lr_ratio"]))
    return wrapped, optimizer, scheduler, trainable


def token_dir(cfg: dict, run_dir: Path, world: Distributed) -> Path:
    from pitstop.recipes import data

    if cfg["data"]["source"] == "tokens":
        return Path(cfg["data"]["path"])
    cache = run_dir / "data"
    if world.local_rank == 0:
        data.stdlib_corpus(cache)
    world.barrier()
    return data.stdlib_corpus(cache)


def train(cfg: dict, run_dir: Path, world: Distributed, stop: StopRequest,
          clock: StartupClock | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from pitstop.recipes import data
    from pitstop.recipes.checkpoint import Checkpointer, capture_rng, restore_rng
    from pitstop.recipes.progress import ProgressWriter
    from pitstop.recipes.segment import SegmentEnd, stop_wanted

    segment = SegmentEnd.from_env()  # a training plan's segment end, when in one
    trainer, data_cfg = cfg["trainer"], cfg["data"]
    seed_everything(trainer["seed"])
    clock = clock or StartupClock()
    clock.mark("runtime imports")  # checkpointing (torch.distributed.checkpoint) is most of it
    model, optimizer, scheduler, trainable = build(cfg, world)
    seed_everything(trainer["seed"] + 1 + world.rank)
    clock.mark("model")

    windows = data.TokenWindows(token_dir(cfg, run_dir, world), data_cfg["seq_len"])
    if windows.vocab_size > cfg["model"]["vocab_size"]:
        raise ValueError(f"the data's vocabulary ({windows.vocab_size}) exceeds model.vocab_size")
    sampler = data.Sampler(windows.count, data_cfg["seed"], world.world_size, world.rank,
                           data_cfg["micro_batch_size"])

    checkpoint_cfg = trainer["checkpoint"]
    checkpointer = Checkpointer(run_dir, keep=checkpoint_cfg["keep"], use_async=checkpoint_cfg["async"],
                                rank=world.rank, process_group=world.checkpoint_group,
                                frozen_params_ignored=cfg["task"] == "lora", background_staging=True)
    checkpointer.remove_incomplete()
    step = 0
    clock.mark("data")
    resumed = checkpointer.load_latest(model, optimizer)
    clock.mark("checkpoint load")
    if resumed is not None:
        step = resumed["step"]
        sampler.load_state_dict(resumed["sampler"])
        scheduler.load_state_dict(resumed["scheduler"])
        if "rng" in resumed:
            restore_rng(resumed["rng"])
        checkpointer.last_saved_step = step
    progress = ProgressWriter(run_dir, step, trainer["tensorboard"]) if world.rank == 0 else None

    def rank_state() -> dict:
        return {"sampler": sampler.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng()}

    autocast = torch.autocast(world.device.type, dtype=torch.bfloat16,
                              enabled=trainer["precision"] == "bf16" and cfg["parallel"]["fsdp"] == 1)
    grad_clip = cfg["optimizer"]["grad_clip"] or math.inf
    tokens_per_step = world.world_size * data_cfg["micro_batch_size"] * data_cfg["seq_len"]
    vocab = cfg["model"]["vocab_size"]
    log.info("training from step %d to %d on %d rank(s); %s", step, trainer["max_steps"], world.world_size,
             clock.describe())
    stopped_by = None
    ended = "finished"
    while step < trainer["max_steps"]:
        wanted = stop_wanted(stop.signal_name, segment)
        if world.any_rank(wanted is not None):
            stopped_by = wanted or "a stop on another rank"
            ended = "segment_end" if stop.signal_name is None and segment is not None and segment.reached() \
                else "stopped"
            stop.honoured = True
            break
        started = time.monotonic()
        inputs, targets = data.batch(windows, sampler.next_indices())
        inputs, targets = inputs.to(world.device), targets.to(world.device)
        lr = scheduler.get_last_lr()[0]
        with autocast:
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        checkpointer.staged()  # an async save copies the state in the background until here
        optimizer.step()
        scheduler.step()
        step += 1
        mean_loss = world.mean(loss)
        checkpointer.poll()
        if step % checkpoint_cfg["interval"] == 0 and step < trainer["max_steps"]:
            checkpointer.save(step, model, optimizer, rank_state(), blocking=False)
        if trainer["step_delay"]:
            time.sleep(trainer["step_delay"])
        step_time = time.monotonic() - started
        if progress is not None:
            progress.heartbeat(step, step_time)
            if step % trainer["log_every"] == 0:
                progress.log(step, mean_loss, lr, float(grad_norm), tokens_per_step / step_time, step_time)

    if stopped_by:
        log.info("stop requested by %s: saving step %d", stopped_by, step)
    saved = checkpointer.save(step, model, optimizer, rank_state(), blocking=True) if step > 0 else checkpointer.wait()
    checkpointer.close()
    blocked = checkpointer.stats.blocked
    if blocked:
        log.info("checkpoint saves blocked training for %s s", ", ".join(f"{seconds:.3f}" for seconds in blocked))
    if progress is not None:
        progress.close()
    if not saved:
        log.error("the checkpoint at step %d is not complete; exiting %d", step, EXIT_SAVE_FAILED)
        return EXIT_SAVE_FAILED
    if world.rank == 0:
        from pitstop.rundir import write_last_exit

        write_last_exit(run_dir, int(os.environ.get("PITSTOP_ATTEMPT") or 0), ended, step)
    return EXIT_OK


def rank_from_slurm(environ=os.environ) -> None:
    """Under `cluster.launcher: srun` every rank is a Slurm task and there is no torchrun
    to set torch.distributed's variables: take them from Slurm's (the batch script sets
    MASTER_ADDR and MASTER_PORT)."""
    if environ.get("PITSTOP_LAUNCHER") != "srun" or "RANK" in environ:
        return
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = environ.get("SLURM_STEP_NUM_TASKS") or environ["SLURM_NTASKS"]
    environ["LOCAL_RANK"] = environ["SLURM_LOCALID"]


def main(argv: list[str] | None = None) -> int:
    rank_from_slurm()
    parser = argparse.ArgumentParser(prog="python -m pitstop.recipes.train",
                                     description="Train the recipe resolved in RUN_DIR/config.yaml.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s")

    from pitstop.recipes.runconfig import ConfigError, data_parallel_degree, load

    stop = StopRequest()
    stop.install()
    clock = StartupClock()
    try:
        cfg = load(args.run_dir)
        if cfg["trainer"]["accelerator"] == "gpu":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("trainer.accelerator: gpu, but no CUDA device is visible")
        data_parallel_degree(cfg["parallel"], int(os.environ.get("WORLD_SIZE", "1")),
                             cfg["trainer"]["accelerator"])
    except ConfigError as exc:
        print(f"pitstop.recipes.train: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    import torch  # noqa: F401  (imported here so its cost shows as its own phase)

    clock.mark("python and imports")
    world = Distributed(cfg["trainer"]["accelerator"])
    clock.mark("process group")
    try:
        code = train(cfg, args.run_dir, world, stop, clock)
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        # A background save may be stuck on a dead peer: do not wait for it at exit.
        os._exit(EXIT_ERROR)
    if stop.honoured:
        # Whoever asked for the stop (torchrun, the batch script, Slurm's KillWait) waits
        # on this exit and the checkpoint is complete: skip the process-group and
        # interpreter teardown, which takes seconds once the peers are going too.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    world.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
