"""Benchmarks of the runtime's checkpoints (issue #4): blocking time of an async save
against a synchronous one, save throughput against a raw `dd … conv=fsync` of the same
bytes, and restore time, for a Llama-style model of 100M+ parameters with AdamW state.

Prints figures; never passes or fails on time. Runs on the CPU in one process: a world of
one over gloo (a file:// store), with the checkpoint group train.py gives the Checkpointer,
and drives recipes/checkpoint.py's Checkpointer itself (save, wait, load_latest), so the
figures include everything the training loop waits for: the rank's JSON state file
(fsync'd), the state-dict gather, dcp's staging and planning, and for a blocking save the
fsync'd data, `.metadata` and the fsync'd `.complete` marker.

The async row drives the Checkpointer as train.py does (background_staging=True): save()
returns at once, the next step's forward/backward runs beside the staging copy, and the
loop waits in staged() before its optimizer.step; held up = save() + that wait.

Blocking times are warm: the first save of each kind is discarded, the median of the rest
is reported (`--reps` saves each, at least 4). Throughput is bytes on disk over the
seconds until the checkpoint is durable and marked, against `dd if=/dev/zero bs=4M
conv=fsync` of the same bytes run just before each save. Restore is load_latest into a
freshly built model and AdamW, with the checkpoint in the page cache and evicted from it.

    .venv/bin/python bench/checkpoint.py [--quick] [--reps 4] [--dim 768 --layers 12]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import recipes.checkpoint as runtime_checkpoint  # noqa: E402
from pitstop import rundir  # noqa: E402
from recipes.checkpoint import Checkpointer  # noqa: E402
from recipes.model import ModelConfig, build_model  # noqa: E402

MB = 1_000_000
DD_BLOCK = 4 * 1024 * 1024


# --- set-up -------------------------------------------------------------------------------

def model_config(args) -> ModelConfig:
    return ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                       ffn_dim=args.ffn_dim, vocab_size=args.vocab, max_seq_len=args.seq)


def make_trainer(config: ModelConfig, args, seed: int = 0):
    model = build_model(config, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    return model, optimizer


def forward_backward(model, config: ModelConfig, args) -> None:
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1))
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), tokens[:, 1:].reshape(-1))
    loss.backward()


def train_step(model, optimizer, config: ModelConfig, args) -> None:
    optimizer.zero_grad(set_to_none=True)
    forward_backward(model, config, args)
    optimizer.step()


def rank_state() -> dict:
    return {"sampler": {"epoch": 0, "position": 0}, "scheduler": {}, "rng": runtime_checkpoint.capture_rng()}


def bytes_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def evict(path: Path) -> None:
    """Drop this checkpoint's (clean, fsync'd) pages from the page cache, and only its."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def dd(target: Path, nbytes: int) -> float:
    count = math.ceil(nbytes / DD_BLOCK)
    started = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=4M", f"count={count}", "conv=fsync"],
                   check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def warm(values: list[float]) -> float:
    """Median with the first (cold) value discarded."""
    return statistics.median(values[1:] if len(values) > 1 else values)


# --- measurements ---------------------------------------------------------------------------

def bench_saves(root: Path, model, optimizer, group, args, step0: int, kind: str) -> dict:
    """`reps` saves of one kind; for each: seconds the caller is held up, seconds until
    complete (durable and marked), bytes on disk. For sync, a dd of the same bytes runs
    just before each save so that both see the same moment's disk."""
    run_dir = root / kind
    durable = kind == "sync"  # blocking saves, each paired with a dd
    ckpt = Checkpointer(run_dir, keep=1, use_async=not durable, rank=0, process_group=group,
                        background_staging=not durable)  # as train.py makes it
    blocked, complete, dd_times, sizes, extra = [], [], [], [], []
    for i in range(args.reps):
        step = step0 + i
        nbytes = sizes[-1] if sizes else None
        if durable and nbytes:
            dd_times.append(dd(root / "dd.bin", nbytes))
        started = time.perf_counter()
        ok = ckpt.save(step, model, optimizer, rank_state(), blocking=durable)
        returned = time.perf_counter()
        if not durable:
            # The training loop's next step overlaps the staging; it waits for the staging
            # before optimizer.step. Held up = save() + that wait.
            optimizer.zero_grad(set_to_none=True)
            fb_started_saving = time.perf_counter()
            forward_backward(model, model.config, args)
            fb_done = time.perf_counter()
            ckpt.staged()
            staged_wait = time.perf_counter() - fb_done
            optimizer.step()
        ok = ckpt.wait() and ok
        done = time.perf_counter()
        if not durable:  # the same forward/backward with no save running
            optimizer.zero_grad(set_to_none=True)
            fb_started = time.perf_counter()
            forward_backward(model, model.config, args)
            extra.append((fb_done - fb_started_saving, staged_wait, time.perf_counter() - fb_started))
            optimizer.zero_grad(set_to_none=True)
        if not ok:
            raise RuntimeError(f"{kind} save at step {step} failed")
        path = rundir.checkpoint_dir(run_dir, step)
        if not (path / rundir.COMPLETE_MARKER).exists():
            raise RuntimeError(f"{kind} save at step {step} has no .complete marker")
        sizes.append(bytes_on_disk(path))
        held = returned - started + (extra[-1][1] if extra else 0.0)
        blocked.append(held)
        complete.append(done - started)
        if durable and i == 0:
            dd_times.append(dd(root / "dd.bin", sizes[0]))
    ckpt.close()
    if durable:  # nothing trained since the last save: it must load back the same
        fresh_model, fresh_optimizer = make_trainer(model.config, args, seed=99)
        Checkpointer(run_dir, keep=1, use_async=False, rank=0, process_group=group).load_latest(
            fresh_model, fresh_optimizer)
        check_same(model, optimizer, fresh_model, fresh_optimizer)
        del fresh_model, fresh_optimizer
    return {"kind": kind, "blocked": blocked, "complete": complete, "dd": dd_times, "bytes": sizes[-1],
            "extra": extra, "run_dir": run_dir, "last_step": step0 + args.reps - 1}


def bench_breakdown(model, optimizer, group, args) -> dict:
    """Where an async save's blocking time goes: the state-dict gather, and dcp's default
    staging copy (a fresh stager per save, as async_save makes one) against a kept one."""
    ckpt = Checkpointer(Path("/nonexistent"), keep=1, use_async=True, rank=0, process_group=group)
    gather, fresh, kept = [], [], []
    stager = DefaultStager(StagingOptions(False, False, False, False))
    for _ in range(args.reps):
        started = time.perf_counter()
        state = ckpt._state(model, optimizer)
        gather.append(time.perf_counter() - started)
        one_off = DefaultStager(StagingOptions(False, False, False, False))
        started = time.perf_counter()
        staged = one_off.stage(state)
        fresh.append(time.perf_counter() - started)
        del staged
        one_off.close()
        started = time.perf_counter()
        stager.stage(state)
        kept.append(time.perf_counter() - started)
    stager.close()
    return {"gather": gather, "fresh": fresh, "kept": kept}


def bench_restore(run_dir: Path, reference, config: ModelConfig, group, args) -> dict:
    """load_latest into a freshly built model and AdamW (built outside the timing): with
    the checkpoint in the page cache (just written) and evicted from it (cold read)."""
    ref_model, ref_optimizer = reference
    path = rundir.latest_complete_checkpoint(run_dir).path
    times = {"cached": [], "evicted": []}
    checked = False
    for i in range(args.reps):
        for mode in ("cached", "evicted"):
            model, optimizer = make_trainer(config, args, seed=1000 + i)
            if mode == "evicted":
                evict(path)
            ckpt = Checkpointer(run_dir, keep=1, use_async=False, rank=0, process_group=group)
            started = time.perf_counter()
            state = ckpt.load_latest(model, optimizer)
            times[mode].append(time.perf_counter() - started)
            if state is None:
                raise RuntimeError("no complete checkpoint to restore")
            if not checked:
                check_same(ref_model, ref_optimizer, model, optimizer)
                checked = True
            del model, optimizer
    return times


def check_same(ref_model, ref_optimizer, model, optimizer) -> None:
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        if not torch.equal(a, b):
            raise RuntimeError(f"restored {name} differs from the saved one")
    ref_state = ref_optimizer.state_dict()["state"]
    state = optimizer.state_dict()["state"]
    for key in ref_state:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            if not torch.equal(ref_state[key][field], state[key][field]):
                raise RuntimeError(f"restored optimizer state {key}.{field} differs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~30M-parameter model, 4 saves of each kind")
    parser.add_argument("--reps", type=int, default=None, help="saves of each kind, the first discarded (>= 4)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--ffn-dim", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.dim, args.layers, args.ffn_dim, args.heads, args.kv_heads = 256, 4, 688, 8, 4
    args.reps = max(4, args.reps or 4)

    root = Path(tempfile.mkdtemp(prefix="pitstop-bench-ckpt-", dir="/tmp"))
    try:
        return run(root, args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args) -> int:
    dist.init_process_group("gloo", init_method=f"file://{root}/pg-store", rank=0, world_size=1)
    group = dist.new_group(backend="gloo")  # as train.py gives the Checkpointer its own group
    config = model_config(args)
    torch.manual_seed(0)
    model, optimizer = make_trainer(config, args)
    started = time.perf_counter()
    train_step(model, optimizer, config, args)  # so that AdamW's state exists
    step_time = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    print("pitstop checkpoint benchmarks (recipes/checkpoint.py Checkpointer, dcp over gloo, world of one, CPU)")
    print(f"model: dim {config.dim}, {config.n_layers} layers, {config.n_heads}/{config.n_kv_heads} heads, "
          f"ffn {config.ffn_dim}, vocab {config.vocab_size}: {n_params / 1e6:.1f}M parameters + AdamW state; "
          f"one training step {step_time:.2f} s (batch {args.batch} x {args.seq})")
    print(f"checkpoints under {root} (filesystem of /tmp); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.reps} saves of each kind, the first discarded")

    kinds = ["sync", "async"]
    results = {}
    step0 = 1
    for kind in kinds:
        results[kind] = bench_saves(root, model, optimizer, group, args, step0, kind)
        step0 += args.reps
        print(f"  {kind:<13} held up {', '.join(f'{t:.3f}' for t in results[kind]['blocked'])} s; "
              f"complete {', '.join(f'{t:.2f}' for t in results[kind]['complete'])} s", flush=True)
        shutil.rmtree(results[kind]["run_dir"], ignore_errors=True)
    breakdown = bench_breakdown(model, optimizer, group, args)
    restore_dir = root / "restore"  # the model as it is now (the async row trained on)
    if not Checkpointer(restore_dir, keep=1, use_async=False, rank=0, process_group=group).save(
            step0, model, optimizer, rank_state(), blocking=True):
        raise RuntimeError("the save to restore from failed")
    shutil.rmtree(results["async"]["run_dir"], ignore_errors=True)
    restore = bench_restore(restore_dir, (model, optimizer), config, group, args)

    sync, asyn = results["sync"], results["async"]
    nbytes = sync["bytes"]
    sync_block, async_block = warm(sync["blocked"]), warm(asyn["blocked"])

    print(f"\ncheckpoint size: {nbytes / MB:.1f} MB on disk ({n_params / 1e6:.1f}M parameters, "
          "fp32 weights + AdamW exp_avg and exp_avg_sq)")
    print("\nblocking time (seconds the training loop is held up; warm median):")
    print(f"{'save':<50} {'median s':>9} {'min s':>7} {'max s':>7} {'vs sync':>8}")
    rows = [("sync  Checkpointer.save(blocking=True)", "sync"),
            ("async Checkpointer.save(blocking=False)+staged() *", "async")]
    for label, kind in rows:
        if kind in results:
            values = results[kind]["blocked"]
            w = values[1:]
            print(f"{label:<50} {warm(values):>9.3f} {min(w):>7.3f} {max(w):>7.3f} "
                  f"{warm(values) / sync_block:>8.3f}")
    print(f"ratio async/sync (the runtime): {async_block / sync_block:.3f} (target <= 0.1: "
          f"{'met' if async_block / sync_block <= 0.1 else 'missed'})")
    for kind in ("async",):
        if kind in results:
            fb = statistics.median(e[0] for e in results[kind]["extra"][1:])
            wait = statistics.median(e[1] for e in results[kind]["extra"][1:])
            plain = statistics.median(e[2] for e in results[kind]["extra"][1:])
            print(f"  * {kind}: held up = save() returning + the wait for the staging after the next step's "
                  f"forward/backward (of it, the wait {wait:.3f} s). That forward/backward took {fb:.2f} s "
                  f"beside the save's background threads (staging, then writing), {plain:.2f} s with no save "
                  f"running: on these 2 shared CPU cores they slow compute by {fb - plain:+.2f} s (any async "
                  f"save's writer thread does; on a GPU the staging copy would overlap compute)")

    print("\nwhere the async save's blocking time goes (warm median):")
    print(f"  state-dict gather (get_model/optimizer_state_dict): {warm(breakdown['gather']):.3f} s")
    print(f"  staging copy, fresh DefaultStager (what async_save makes per save unless given one): {warm(breakdown['fresh']):.3f} s")
    print(f"  staging copy, DefaultStager kept across saves (the runtime; in the background): {warm(breakdown['kept']):.3f} s")

    print("\nsave throughput (bytes on disk / seconds until durable: data fsync'd, .metadata, .complete;")
    print("each sync save is paired with a dd of the same bytes run just before it; 'vs dd' is the")
    print("median of the pairs' ratios; the async rows are against the sync row's dd median):")
    print(f"{'write':<50} {'MB':>8} {'median s':>9} {'MB/s':>8} {'vs dd':>7}")
    dd_bytes = math.ceil(nbytes / DD_BLOCK) * DD_BLOCK
    ratios = {}
    for label, kind in (("sync Checkpointer.save", "sync"),):
        if kind not in results:
            continue
        r = results[kind]
        dd_tput = dd_bytes / warm(r["dd"]) / MB
        tput = r["bytes"] / warm(r["complete"]) / MB
        # the median of each save's ratio to the dd just before it (the disk's speed drifts)
        ratios[kind] = warm([(dd_s * r["bytes"]) / (save_s * dd_bytes)
                             for dd_s, save_s in zip(r["dd"], r["complete"])])
        print(f"{'  dd if=/dev/zero bs=4M conv=fsync':<50} {dd_bytes / MB:>8.1f} {warm(r['dd']):>9.2f} "
              f"{dd_tput:>8.1f} {1.0:>7.2f}")
        print(f"{label:<50} {r['bytes'] / MB:>8.1f} {warm(r['complete']):>9.2f} {tput:>8.1f} "
              f"{ratios[kind]:>7.2f}")
    dd_sync = dd_bytes / warm(sync["dd"]) / MB
    for label, kind in (("async Checkpointer.save .. wait (complete)", "async"),):
        if kind in results:
            r = results[kind]
            tput = r["bytes"] / warm(r["complete"]) / MB
            print(f"{label:<50} {r['bytes'] / MB:>8.1f} {warm(r['complete']):>9.2f} {tput:>8.1f} "
                  f"{tput / dd_sync:>7.2f}")
    print(f"ratio checkpoint/dd (the runtime's sync save): {ratios['sync']:.2f} (target >= 0.7: "
          f"{'met' if ratios['sync'] >= 0.7 else 'missed'})")

    print("\nrestore (Checkpointer.load_latest into a fresh model + AdamW; warm median):")
    print(f"  checkpoint in the page cache: {warm(restore['cached']):.2f} s; "
          f"evicted from it (read from disk): {warm(restore['evicted']):.2f} s; restored state checked equal")
    print("\nfigures are noisy: other work shares this machine's cores and disk.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
