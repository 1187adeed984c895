"""Training data without downloads: a byte-level tokenizer, memory-mapped token files and
a sampler whose position is a checkpointable pair (epoch, index).

A token directory holds `tokens.bin` (uint16 ids, one long stream; documents separated by
id 0, the NUL byte, which text never holds) and `meta.json`, written last, so a directory
with a meta.json is whole. `source: stdlib` builds such a directory once from the Python
standard library's sources. The sampler's order of sequence windows is a pure function
of (data.seed, epoch); each step takes the next world_size * micro_batch_size windows and
gives every rank a disjoint slice, so a resumed run sees exactly the batches an
uninterrupted one would, whatever the world size.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pitstop.fsutil import write_json_atomic

TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"
FORMAT = "pitstop-tokens-v1"
VOCAB_SIZE = 256
DOCUMENT_SEPARATOR = 0
STDLIB_CAP_BYTES = 4 * 1024 * 1024


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)


def decode(ids) -> str:
    return bytes(int(i) for i in ids if int(i) != DOCUMENT_SEPARATOR).decode("utf-8", errors="replace")


def prepare(files: list[Path], out_dir: Path) -> dict:
    """Tokenize text files, in the order given, into out_dir; returns the meta written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{TOKENS_FILE}.{os.getpid()}.tmp"
    n_tokens = 0
    try:
        with open(tmp, "wb") as fh:
            for path in files:
                raw = Path(path).read_bytes().replace(b"\x00", b"")
                fh.write(np.frombuffer(raw, dtype=np.uint8).astype("<u2").tobytes())
                fh.write(np.array([DOCUMENT_SEPARATOR], dtype="<u2").tobytes())
                n_tokens += len(raw) + 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_dir / TOKENS_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta = {"format": FORMAT, "dtype": "uint16", "tokenizer": "bytes", "vocab_size": VOCAB_SIZE,
            "n_tokens": n_tokens, "n_files": len(files)}
    write_json_atomic(out_dir / META_FILE, meta, indent=2)
    return meta


def read_meta(token_dir: Path) -> dict:
    meta_path = Path(token_dir) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{token_dir} is not a prepared token directory (no {META_FILE})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def stdlib_sources(cap_bytes: int = STDLIB_CAP_BYTES) -> list[Path]:
    """The standard library's .py files in sorted order, whole files up to cap_bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chosen, total = [], 0
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        parts = path.relative_to(root).parts
        if any(part in ("site-packages", "dist-packages", "__pycache__") for part in parts):
            continue
        size = path.stat().st_size
        if total + size > cap_bytes:
            break
        chosen.append(path)
        total += size
    return chosen


def stdlib_corpus(cache_dir: Path, cap_bytes: int = STDLIB_CAP_BYTES) -> Path:
    """The token directory of the stdlib corpus under cache_dir, built on first use."""
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    token_dir = Path(cache_dir) / f"stdlib-{version}-{cap_bytes}"
    if not (token_dir / META_FILE).exists():
        prepare(stdlib_sources(cap_bytes), token_dir)
    return token_dir


class TokenWindows:
    """Non-overlapping windows of seq_len + 1 tokens (inputs and shifted targets)."""

    def __init__(self, token_dir: Path, seq_len: int):
        meta = read_meta(token_dir)
        self.tokens = np.memmap(Path(token_dir) / TOKENS_FILE, dtype="<u2", mode="r",
                                shape=(meta["n_tokens"],))
        self.vocab_size = meta["vocab_size"]
        self.seq_len = seq_len
        self.count = (len(self.tokens) - 1) // seq_len

    def window(self, index: int) -> np.ndarray:
        start = index * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64)


@dataclass
class SamplerPosition:
    epoch: int = 0
    index: int = 0


class Sampler:
    """The deterministic order of windows, and this rank's share of each step's batch."""

    def __init__(self, n_windows: int, seed: int, world_size: int, rank: int, micro_batch_size: int):
        self.global_batch = world_size * micro_batch_size
        if n_windows < self.global_batch:
            raise ValueError(f"the data holds {n_windows} windows, fewer than one global batch "
                             f"({world_size} ranks x {micro_batch_size})")
        self.n_windows = n_windows
        self.seed = seed
        self.rank = rank
        self.micro_batch_size = micro_batch_size
        self.position = SamplerPosition()
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._order_epoch = epoch
        return self._order

    def next_indices(self) -> np.ndarray:
        """This rank's window indices for the next step; advances the position."""
        if self.position.index + self.global_batch > self.n_windows:
            self.position = SamplerPosition(self.position.epoch + 1, 0)
        start = self.position.index + self.rank * self.micro_batch_size
        indices = self.order(self.position.epoch)[start:start + self.micro_batch_size]
        self.position = SamplerPosition(self.position.epoch, self.position.index + self.global_batch)
        return indices

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "index": self.position.index}

    def load_state_dict(self, state: dict) -> None:
        self.position = SamplerPosition(int(state["epoch"]), int(state["index"]))


def batch(windows: TokenWindows, indices: np.ndarray):
    """(inputs, targets) as int64 torch tensors of shape (len(indices), seq_len)."""
    import torch

    rows = torch.from_numpy(np.stack([windows.window(int(i)) for i in indices]))
    return rows[:, :-1], rows[:, 1:]
