"""The checkpointer in one process: markers, keep-last-k, async staging, a failing disk."""

from __future__ import annotations

import contextlib
import random
import resource
import signal

import numpy as np
import pytest
import torch

from pitstop import rundir
from pitstop.recipes.checkpoint import Checkpointer, capture_rng, restore_rng
from pitstop.recipes.model import ModelConfig, build_model

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

CONFIG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=256, max_seq_len=32)


def trained(seed=0, steps=1):
    model = build_model(CONFIG, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        tokens = torch.randint(0, 256, (2, 16))
        model(tokens).logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def checkpointer(run_dir, keep=2, use_async=False):
    return Checkpointer(run_dir, keep=keep, use_async=use_async, rank=0, process_group=None)


@contextlib.contextmanager
def file_size_limit(limit_bytes: int):
    """Writes beyond limit_bytes fail with a real OSError (EFBIG), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_save_then_load_restores_model_optimizer_and_rank_state(tmp_path):
    model, optimizer = trained(seed=0, steps=2)
    assert checkpointer(tmp_path).save(5, model, optimizer, {"sampler": {"epoch": 1, "index": 8}}, blocking=True)
    info = rundir.latest_complete_checkpoint(tmp_path)
    assert info.step == 5 and (info.path / rundir.COMPLETE_MARKER).exists()

    fresh, fresh_optimizer = trained(seed=1, steps=0)
    state = checkpointer(tmp_path).load_latest(fresh, fresh_optimizer)
    assert state["step"] == 5 and state["sampler"] == {"epoch": 1, "index": 8}
    for (name, ours), theirs in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(ours, theirs), name
    saved_moments = [s["exp_avg"] for s in optimizer.state.values()]
    loaded_moments = [s["exp_avg"] for s in fresh_optimizer.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(saved_moments, loaded_moments))


def test_nothing_to_load_in_an_empty_run_dir(tmp_path):
    model, optimizer = trained(steps=0)
    assert checkpointer(tmp_path).load_latest(model, optimizer) is None


def test_keep_last_k_and_incomplete_debris(tmp_path):
    model, optimizer = trained()
    saver = checkpointer(tmp_path, keep=2)
    rundir.checkpoint_dir(tmp_path, 1).mkdir(parents=True)  # a crashed save, older than any complete one
    for step in (2, 4, 6):
        saver.save(step, model, optimizer, {}, blocking=True)
    assert [(c.step, c.complete) for c in rundir.list_checkpoints(tmp_path)] == [(4, True), (6, True)]


def test_an_incomplete_checkpoint_is_never_loaded(tmp_path):
    model, optimizer = trained(seed=0)
    checkpointer(tmp_path).save(3, model, optimizer, {}, blocking=True)
    later, later_optimizer = trained(seed=1)
    checkpointer(tmp_path).save(6, later, later_optimizer, {}, blocking=True)
    (rundir.checkpoint_dir(tmp_path, 6) / rundir.COMPLETE_MARKER).unlink()

    fresh, fresh_optimizer = trained(seed=2, steps=0)
    saver = checkpointer(tmp_path)
    assert saver.load_latest(fresh, fresh_optimizer)["step"] == 3
    assert torch.equal(fresh.output.weight, model.output.weight)
    saver.remove_incomplete()
    assert [c.step for c in rundir.list_checkpoints(tmp_path)] == [3]


def test_async_save_holds_the_state_of_the_step_it_was_called_at(tmp_path):
    model, optimizer = trained()
    expected = model.output.weight.detach().clone()
    saver = checkpointer(tmp_path, use_async=True)
    assert saver.save(1, model, optimizer, {}, blocking=False)
    with torch.no_grad():
        model.output.weight.add_(1.0)
    assert saver.wait()
    assert (rundir.checkpoint_dir(tmp_path, 1) / rundir.COMPLETE_MARKER).exists()
    fresh, fresh_optimizer = trained(seed=3, steps=0)
    checkpointer(tmp_path).load_latest(fresh, fresh_optimizer)
    assert torch.equal(fresh.output.weight, expected)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_full_disk_fails_the_save_and_keeps_the_last_complete_checkpoint(tmp_path, use_async):
    model, optimizer = trained()
    saver = checkpointer(tmp_path, keep=1, use_async=use_async)
    assert saver.save(2, model, optimizer, {}, blocking=True)
    with file_size_limit(64 * 1024):
        started = saver.save(4, model, optimizer, {}, blocking=False)
        finished = saver.wait()
    assert not (started and finished)
    assert saver.stats.failed == [4]
    assert [(c.step, c.complete) for c in rundir.list_checkpoints(tmp_path)] == [(2, True)]
    assert saver.save(6, model, optimizer, {}, blocking=True)
    assert [c.step for c in rundir.list_checkpoints(tmp_path)] == [6]


def test_rng_states_round_trip():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    saved = capture_rng()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2)
    random.seed(2)
    np.random.seed(2)
    restore_rng(saved)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


@pytest.mark.parametrize("background", [False, True], ids=["staged-in-save", "staged-in-background"])
def test_async_saves_reuse_one_stager_and_hold_the_state_at_save_time(tmp_path, background, monkeypatch):
    """One DefaultStager (one set of staging buffers) for the Checkpointer's life; the loop
    is held only until the copy is done (save() returning, or staged() with background
    staging), and the optimizer stepping right after does not leak into the checkpoint."""
    import pitstop.recipes.checkpoint as checkpoint_module

    stagers = []
    real_async_save = checkpoint_module.dcp.async_save

    def recording_async_save(*args, async_stager=None, **kwargs):
        stagers.append(async_stager)
        return real_async_save(*args, async_stager=async_stager, **kwargs)

    monkeypatch.setattr(checkpoint_module.dcp, "async_save", recording_async_save)
    model, optimizer = trained()
    saver = Checkpointer(tmp_path, keep=3, use_async=True, rank=0, process_group=None,
                         background_staging=background)
    expected = {}
    for step in (1, 2, 3):
        expected[step] = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                          [s["exp_avg"].clone() for s in optimizer.state.values()])
        assert saver.save(step, model, optimizer, {}, blocking=False)
        assert saver.pending is not None and (saver.staging is not None) == background
        saver.staged()
        trained_step(model, optimizer)  # the state changes while the save is being written
    assert saver.close()
    assert saver.stager is None and len(stagers) == 3
    assert stagers[0] is not None and all(s is stagers[0] for s in stagers)
    assert len(saver.stats.blocked) == 3 and saver.stats.failed == []
    assert torch.utils.serialization.config.save.compute_crc32  # put back after the saves

    for step in (1, 2, 3):
        markers = [rundir.checkpoint_dir(tmp_path, other) / rundir.COMPLETE_MARKER for other in (1, 2, 3)]
        hidden = [marker.with_name(marker.name + ".hidden") for marker in markers]
        for other, marker, away in zip((1, 2, 3), markers, hidden):
            if other != step:  # load only this step's checkpoint
                marker.rename(away)
        fresh, fresh_optimizer = trained(seed=5, steps=1)
        assert checkpointer(tmp_path).load_latest(fresh, fresh_optimizer)["step"] == step
        weights, moments = expected[step]
        for name, value in fresh.state_dict().items():
            assert torch.equal(value, weights[name]), (step, name)
        assert all(torch.equal(a, b) for a, b in
                   zip(moments, [s["exp_avg"] for s in fresh_optimizer.state.values()]))
        for marker, away in zip(markers, hidden):
            if away.exists():
                away.rename(marker)


def test_saves_are_written_without_torch_save_crc32_and_load_back(tmp_path):
    """The CRC-32 is off only while a save is writing, and the files restore exactly."""
    config = torch.utils.serialization.config.save
    model, optimizer = trained(steps=2)
    seen = []
    real_write = torch.save

    def spying_save(*args, **kwargs):
        seen.append(config.compute_crc32)
        return real_write(*args, **kwargs)

    torch.save, previous = spying_save, torch.save
    try:
        assert checkpointer(tmp_path).save(2, model, optimizer, {}, blocking=True)
    finally:
        torch.save = previous
    assert config.compute_crc32
    assert seen and not any(seen)
    fresh, fresh_optimizer = trained(seed=4, steps=0)
    assert checkpointer(tmp_path).load_latest(fresh, fresh_optimizer)["step"] == 2
    assert torch.equal(fresh.output.weight, model.output.weight)


def trained_step(model, optimizer):
    tokens = torch.randint(0, 256, (2, 16))
    model(tokens).logsumexp(-1).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
