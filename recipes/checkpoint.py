"""Checkpoints that survive the faults pitstop exists for.

One torch.distributed.checkpoint (dcp) directory per save, `checkpoints/step-NNNNNN/`,
holding the model and optimizer (sharded or deduplicated by dcp) and one small JSON file
per rank with what dcp does not hold: step, scheduler, sampler position and the RNG
states. The `.complete` marker is written by rank 0, atomically, only once every rank's
files are written and fsync'd (dcp's coordinator writes `.metadata` only after it has
gathered every rank's write result), so a directory without it is never loaded.

Async saves stage (copy) the state into host memory and write it from a background thread
over a separate gloo process group, so its collectives never interleave with the training
loop's. The staging buffers (pinned on a CUDA machine) belong to one DefaultStager kept for
the Checkpointer's life, allocated at the first async save and refilled by every later
one; `close()` frees them. By default save() returns once the copy is done (that is all the
step waits for); with background_staging=True the copy runs in the stager's thread and the
caller must call `staged()` before it next changes the state (the training loop: before
its next optimizer.step). Only one save is in flight: the next one, and the exit, first
wait for it.

Checkpoint files are written without torch.save's per-record CRC-32 (about a third of the
write time, and torch.load never checks it: the marker and fsync are what make a checkpoint
trustworthy here): the process-wide setting is off from a save's start until it is
finished, then put back.

Keep-last-k deletes only after a newer checkpoint is complete: the complete ones beyond
the newest k, and incomplete ones older than the newest complete. A failed save (a full
disk, an OSError on any rank) never gets a marker, its directory is removed to give the
space back, and every older checkpoint stays in place; `save`/`wait` return False and
the caller decides (the training loop carries on after a failed periodic save and exits
non-zero when the save before exit fails).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.utils.serialization.config as serialization_config
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from pitstop import rundir
from pitstop.fsutil import write_atomic, write_json_atomic

log = logging.getLogger("pitstop.recipes.checkpoint")

# Test-only fault injection: the step whose save rank 0 abandons with os._exit after
# every data file and .metadata are written, before the .complete marker.
CRASH_DURING_SAVE_ENV = "PITSTOP_TEST_CRASH_DURING_SAVE"
CRASH_DURING_SAVE_EXIT = 99


def rank_state_file(rank: int) -> str:
    return f"trainer-rank{rank:05d}.json"


def capture_rng() -> dict:
    numpy_state = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state().tolist(),
        "python": _to_lists(random.getstate()),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state().tolist()
    return rng


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    random.setstate(_to_tuples(rng["python"]))
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(rng["cuda"], dtype=torch.uint8))


def _to_lists(value):
    return [_to_lists(item) for item in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(item) for item in value) if isinstance(value, list) else value


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class PendingSave:
    step: int
    path: Path
    future: Any
    started: float
    crc32_before: bool


@dataclass
class SaveStats:
    """Per save: seconds the training loop was held up (blocked: staging, save() and then
    staged() with background staging, or all of a blocking save; waited: for the previous
    save), seconds until complete, failed steps."""
    blocked: list[float] = field(default_factory=list)
    waited: list[float] = field(default_factory=list)
    completed: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class Checkpointer:
    def __init__(self, run_dir: Path, *, keep: int, use_async: bool, rank: int,
                 process_group: dist.ProcessGroup | None, frozen_params_ignored: bool = False,
                 background_staging: bool = False):
        """frozen_params_ignored: leave frozen parameters (a LoRA base, rebuilt from
        model.init_from on every start) out of the checkpoint. background_staging: an async
        save returns before the state is copied; call staged() before changing it."""
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.use_async = use_async
        self.rank = rank
        self.background_staging = background_staging
        self.process_group = process_group
        self.options = StateDictOptions(ignore_frozen_params=frozen_params_ignored,
                                        strict=not frozen_params_ignored)
        self.pending: PendingSave | None = None
        self.staging: Any = None  # the in-flight save's copy into the stager's buffers
        self.stager: DefaultStager | None = None  # made at the first async save
        self.last_saved_step: int | None = None
        self.stats = SaveStats()

    def _stager(self, model: torch.nn.Module) -> DefaultStager:
        """The one stager of this Checkpointer's life. Reusing its buffers is safe: only one
        save is ever in flight, and save() waits for the previous one first. Its buffers are
        pinned when the model is on a GPU (faster device-to-host copies)."""
        if self.stager is None:
            on_gpu = any(p.device.type == "cuda" for p in model.parameters())
            self.stager = DefaultStager(StagingOptions(
                use_pinned_memory=on_gpu and torch.cuda.is_available(), use_shared_memory=False,
                use_async_staging=self.background_staging, use_non_blocking_copy=False))
        return self.stager

    def _state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        return {"model": get_model_state_dict(model, options=self.options),
                "optim": get_optimizer_state_dict(model, optimizer, options=self.options)}

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier(group=self.process_group)

    def remove_incomplete(self) -> None:
        """At start: no save is running, so every directory without a marker is debris."""
        if self.rank == 0:
            for info in rundir.list_checkpoints(self.run_dir):
                if not info.complete:
                    log.info("removing incomplete checkpoint %s", info.path)
                    shutil.rmtree(info.path, ignore_errors=True)
        self._barrier()

    def _all_ok(self, ok: bool) -> bool:
        if not dist.is_initialized():
            return ok
        failed = torch.tensor([0 if ok else 1])
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=self.process_group)
        return failed.item() == 0

    def save(self, step: int, model, optimizer, rank_state: dict, *, blocking: bool) -> bool:
        """Save at step (every rank calls it at the same step). A blocking save returns
        whether the checkpoint is complete; an async one returns once the state is staged,
        or with background_staging once the copy is started (wait for it with `staged()`);
        its outcome shows at `poll`/`wait`. False means this save failed."""
        self.wait()
        if step == self.last_saved_step:
            return True
        path = rundir.checkpoint_dir(self.run_dir, step)
        if self.rank == 0 and path.exists():
            shutil.rmtree(path)
        self._barrier()
        started = time.monotonic()
        prepared: Exception | None = None
        try:
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path / rank_state_file(self.rank), {"step": step, **rank_state})
        except OSError as exc:
            prepared = exc
        if not self._all_ok(prepared is None):
            return self._finish(step, path, started, prepared or OSError("another rank could not write"))
        crc32_before = serialization_config.save.compute_crc32
        serialization_config.save.compute_crc32 = False
        try:
            state = self._state(model, optimizer)
            if blocking or not self.use_async:
                dcp.save(state, checkpoint_id=path, process_group=self.process_group,
                         no_dist=not dist.is_initialized())
                self.stats.blocked.append(time.monotonic() - started)
                return self._finish(step, path, started, error=None, crc32_before=crc32_before)
            response = dcp.async_save(state, checkpoint_id=path, process_group=self.process_group,
                                      no_dist=not dist.is_initialized(), async_stager=self._stager(model))
        except (Exception, CheckpointException) as exc:  # dcp's, on every rank when one rank fails
            self.stats.blocked.append(time.monotonic() - started)
            return self._finish(step, path, started, error=exc, crc32_before=crc32_before)
        if isinstance(response, AsyncSaveResponse):
            self.staging, future = response.staging_completion, response.upload_completion
        else:
            future = response
        self.stats.blocked.append(time.monotonic() - started)
        self.pending = PendingSave(step, path, future, started, crc32_before)
        return True

    def staged(self) -> None:
        """Block until the in-flight save has copied the state; call before changing it
        (optimizer.step). A failed copy shows as that save's failure at poll/wait."""
        staging, self.staging = self.staging, None
        if staging is None:
            return
        waited_from = time.monotonic()
        try:
            staging.result()
        except Exception:  # noqa: BLE001 - the upload future carries it
            pass
        if self.stats.blocked:
            self.stats.blocked[-1] += time.monotonic() - waited_from

    def poll(self) -> bool:
        """Finish the in-flight save if it is done; never blocks. False if it failed."""
        if self.pending is None or not self.pending.future.done():
            return True
        return self.wait()

    def wait(self) -> bool:
        """Block until the in-flight save is done and finished; False if it failed."""
        if self.pending is None:
            return True
        pending, self.pending = self.pending, None
        self.staging = None  # the upload waits for the staging first
        waited_from = time.monotonic()
        error = None
        try:
            pending.future.result()
        except (Exception, CheckpointException) as exc:
            error = exc
        self.stats.waited.append(time.monotonic() - waited_from)
        return self._finish(pending.step, pending.path, pending.started, error, pending.crc32_before)

    def close(self) -> bool:
        """Wait for the in-flight save, then free the staging buffers; False if it failed."""
        ok = self.wait()
        if self.stager is not None:
            self.stager.close()
            self.stager = None
        return ok

    def _finish(self, step: int, path: Path, started: float, error: Exception | None,
                crc32_before: bool | None = None) -> bool:
        if crc32_before is not None:
            serialization_config.save.compute_crc32 = crc32_before
        if error is not None:
            self.stats.failed.append(step)
            log.error("checkpoint step %d failed, keeping the older ones: %s", step, error)
            if self.rank == 0:
                shutil.rmtree(path, ignore_errors=True)
            return False
        self.stats.completed.append(time.monotonic() - started)
        self.last_saved_step = step
        if self.rank == 0:
            if os.environ.get(CRASH_DURING_SAVE_ENV) == str(step):
                os._exit(CRASH_DURING_SAVE_EXIT)
            fsync_dir(path)
            write_atomic(path / rundir.COMPLETE_MARKER, json.dumps({"step": step, "time": time.time()}) + "\n")
            fsync_dir(path)
            self.prune()
        # The save's own hold on training (the last one recorded: one save is in flight at a time).
        log.info("checkpoint step %d complete (%.2fs; blocked training %.3fs)", step,
                 self.stats.completed[-1], self.stats.blocked[-1] if self.stats.blocked else 0.0)
        return True

    def prune(self) -> None:
        checkpoints = rundir.list_checkpoints(self.run_dir)
        complete = [c for c in checkpoints if c.complete]
        if not complete:
            return
        newest = complete[-1].step
        doomed = complete[:-self.keep] + [c for c in checkpoints if not c.complete and c.step < newest]
        for info in doomed:
            shutil.rmtree(info.path, ignore_errors=True)

    def load_latest(self, model, optimizer) -> dict | None:
        """Restore model and optimizer from the newest complete checkpoint (the same one on
        every rank); returns this rank's state file, or None when there is none."""
        started = time.monotonic()
        info = rundir.latest_complete_checkpoint(self.run_dir)
        chosen = [info.step if info else None]
        if dist.is_initialized():
            dist.broadcast_object_list(chosen, src=0, group=self.process_group)
        if chosen[0] is None:
            return None
        path = rundir.checkpoint_dir(self.run_dir, chosen[0])
        agreed = time.monotonic()
        state = self._state(model, optimizer)
        dcp.load(state, checkpoint_id=path, process_group=self.process_group,
                 no_dist=not dist.is_initialized())
        read = time.monotonic()
        set_model_state_dict(model, state["model"], options=self.options)
        set_optimizer_state_dict(model, optimizer, state["optim"], options=self.options)
        own = path / rank_state_file(self.rank)
        rank_state = json.loads((own if own.exists() else path / rank_state_file(0)).read_text())
        if not own.exists():
            rank_state.pop("rng", None)
        log.info("resumed from %s (choosing it %.2fs, reading %.2fs, applying %.2fs)", path,
                 agreed - started, read - agreed, time.monotonic() - read)
        return rank_state
