"""The byte tokenizer, prepared token directories, the stdlib corpus and the sampler."""

from __future__ import annotations

import numpy as np

from pitstop.recipes import data


def test_bytes_round_trip_including_non_ascii():
    text = "def f():\n    return 'héllo ✓'\n"
    ids = data.encode(text)
    assert ids.max() < 256 and len(ids) == len(text.encode())
    assert data.decode(ids) == text


def test_prepare_writes_the_tokens_of_every_file_then_the_meta(tmp_path):
    (tmp_path / "a.txt").write_text("abc")
    (tmp_path / "b.txt").write_text("de")
    meta = data.prepare([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "out")
    assert meta["n_tokens"] == 7 and meta["vocab_size"] == 256
    tokens = np.fromfile(tmp_path / "out" / data.TOKENS_FILE, dtype="<u2")
    assert tokens.tolist() == [97, 98, 99, 0, 100, 101, 0]
    assert data.read_meta(tmp_path / "out") == meta
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_stdlib_corpus_is_deterministic_capped_and_cached(tmp_path):
    cap = 200_000
    first = data.stdlib_corpus(tmp_path / "one", cap_bytes=cap)
    second = data.stdlib_corpus(tmp_path / "two", cap_bytes=cap)
    raw = (first / data.TOKENS_FILE).read_bytes()
    assert raw == (second / data.TOKENS_FILE).read_bytes()
    assert 0 < data.read_meta(first)["n_tokens"] <= cap + data.read_meta(first)["n_files"]
    stamp = (first / data.TOKENS_FILE).stat().st_mtime_ns
    assert data.stdlib_corpus(tmp_path / "one", cap_bytes=cap) == first
    assert (first / data.TOKENS_FILE).stat().st_mtime_ns == stamp
    assert "import" in data.decode(data.TokenWindows(first, 4096).window(0))


def draw(sampler, steps):
    return [sampler.next_indices().tolist() for _ in range(steps)]


def test_order_is_a_function_of_seed_and_epoch():
    a = data.Sampler(40, seed=1, world_size=1, rank=0, micro_batch_size=8)
    b = data.Sampler(40, seed=1, world_size=1, rank=0, micro_batch_size=8)
    c = data.Sampler(40, seed=2, world_size=1, rank=0, micro_batch_size=8)
    assert draw(a, 12) == draw(b, 12)
    assert draw(data.Sampler(40, 1, 1, 0, 8), 5) != draw(c, 5)
    epoch_0 = sum(draw(data.Sampler(40, 1, 1, 0, 8), 5), [])
    assert sorted(epoch_0) == list(range(40))
    again = data.Sampler(40, 1, 1, 0, 8)
    draw(again, 5)
    epoch_1 = sum(draw(again, 5), [])
    assert sorted(epoch_1) == list(range(40)) and epoch_1 != epoch_0
    assert again.state_dict() == {"epoch": 1, "index": 40}


def test_ranks_get_disjoint_slices_of_the_same_global_batch():
    single = data.Sampler(100, seed=3, world_size=1, rank=0, micro_batch_size=8)
    ranks = [data.Sampler(100, seed=3, world_size=2, rank=r, micro_batch_size=4) for r in (0, 1)]
    for _ in range(30):
        zero, one = ranks[0].next_indices().tolist(), ranks[1].next_indices().tolist()
        assert not set(zero) & set(one)
        assert zero + one == single.next_indices().tolist()


def test_a_restored_position_continues_with_the_same_batches():
    uninterrupted = data.Sampler(50, seed=5, world_size=2, rank=1, micro_batch_size=3)
    draw(uninterrupted, 7)
    saved = uninterrupted.state_dict()
    expected = draw(uninterrupted, 10)
    resumed = data.Sampler(50, seed=5, world_size=2, rank=1, micro_batch_size=3)
    resumed.load_state_dict(saved)
    assert draw(resumed, 10) == expected


def test_batch_targets_are_the_inputs_shifted_by_one(tmp_path):
    (tmp_path / "a.txt").write_text("0123456789" * 3)
    data.prepare([tmp_path / "a.txt"], tmp_path / "tok")
    windows = data.TokenWindows(tmp_path / "tok", 8)
    inputs, targets = data.batch(windows, np.array([0, 2]))
    assert inputs.shape == targets.shape == (2, 8)
    assert inputs.dtype.is_floating_point is False
    assert inputs[0, 1:].tolist() == targets[0, :-1].tolist()
    assert data.decode(inputs[1]) == "67890123"
