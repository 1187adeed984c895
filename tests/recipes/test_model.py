"""The decoder, LoRA and the Hugging Face weight format, on tiny models on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from pitstop.recipes.lora import LoRALinear, apply_lora, hf_name, load_hf_checkpoint, write_hf_checkpoint
from pitstop.recipes.model import (
    ModelConfig,
    MoEFeedForward,
    apply_rope,
    build_model,
    rope_tables,
    route_tokens,
)

TINY = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=256,
                   max_seq_len=32, rope_theta=10000.0)


def tokens(batch=2, seq=16, seed=0):
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_grouped_query_attention_has_fewer_key_value_heads_and_logits_of_vocab_size():
    model = build_model(TINY, seed=0)
    attention = model.layers[0].attention
    assert attention.wq.weight.shape == (32, 32)
    assert attention.wk.weight.shape == (16, 32)  # 2 kv heads of 8
    assert attention.wv.weight.shape == (16, 32)
    assert model(tokens()).shape == (2, 16, 256)


def test_same_seed_same_weights_other_seed_other_weights():
    first, again, other = build_model(TINY, 7), build_model(TINY, 7), build_model(TINY, 8)
    x = tokens()
    assert torch.equal(first(x), again(x))
    assert not torch.allclose(first(x), other(x))


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(head_dim=8, max_seq_len=64, theta=10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        rq = apply_rope(q.view(1, 1, 1, 8), cos[m:m + 1], sin[m:m + 1]).flatten()
        rk = apply_rope(k.view(1, 1, 1, 8), cos[n:n + 1], sin[n:n + 1]).flatten()
        return float(rq @ rk)

    assert score(5, 2) == pytest.approx(score(40, 37), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)
    rotated = apply_rope(q.view(1, 1, 1, 8), cos[9:10], sin[9:10])
    assert rotated.norm() == pytest.approx(q.norm(), rel=1e-5)


def test_causal_attention_never_sees_the_future():
    model = build_model(TINY, seed=0)
    x = tokens()
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    assert torch.allclose(model(x)[:, :10], model(changed)[:, :10], atol=1e-6)
    assert not torch.allclose(model(x)[:, 10:], model(changed)[:, 10:])


def test_sliding_window_forgets_tokens_beyond_the_window():
    windowed = ModelConfig(**{**TINY.__dict__, "n_layers": 1, "sliding_window": 4})
    model = build_model(windowed, seed=0)
    x = tokens(seq=16)
    changed = x.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 256
    # one layer, window 4: position 8 attends to 5..8 only
    assert torch.allclose(model(x)[:, 8:], model(changed)[:, 8:], atol=1e-6)
    assert not torch.allclose(model(x)[:, :4], model(changed)[:, :4])


def test_moe_routes_each_token_to_its_top_k_experts_with_weights_summing_to_one():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 0.0, 4.0]])
    weights, chosen = route_tokens(logits, k=2)
    assert chosen.tolist() == [[1, 2], [0, 3]]
    assert torch.allclose(weights.sum(-1), torch.ones(2))
    assert weights[0, 0] > weights[0, 1]

    torch.manual_seed(0)
    moe = MoEFeedForward(dim=8, hidden=16, n_experts=4, experts_per_token=2)
    x = torch.randn(3, 8)
    weights, chosen = route_tokens(moe.gate(x), 2)
    expected = torch.stack([sum(weights[t, s] * moe.experts[int(chosen[t, s])](x[t]) for s in range(2))
                            for t in range(3)])
    assert torch.allclose(moe(x), expected, atol=1e-6)


def test_every_expert_gets_a_gradient_even_when_no_token_chose_it():
    torch.manual_seed(0)
    moe = MoEFeedForward(dim=8, hidden=16, n_experts=4, experts_per_token=1)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[2] = 1.0
    x = torch.ones(5, 8)
    moe(x).sum().backward()
    assert all(expert.w1.weight.grad is not None for expert in moe.experts)
    assert moe.experts[0].w1.weight.grad.abs().sum() == 0
    assert moe.experts[2].w1.weight.grad.abs().sum() > 0


def test_lora_starts_as_the_base_model_and_trains_only_the_adapters():
    model = build_model(TINY, seed=0)
    x = tokens()
    before = model(x).detach()
    wrapped = apply_lora(model, ["wq", "wv"], rank=4, alpha=8.0, dropout=0.0)
    assert wrapped == ["layers.0.attention.wq", "layers.0.attention.wv",
                       "layers.1.attention.wq", "layers.1.attention.wv"]
    assert torch.allclose(model(x), before, atol=1e-6)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{m}.lora_{ab}" for m in wrapped for ab in "ab")
    model(x).logsumexp(-1).mean().backward()
    with_grads = sorted(name for name, p in model.named_parameters() if p.grad is not None)
    assert with_grads == trainable
    assert isinstance(model.layers[0].attention.wq, LoRALinear)


def test_lora_target_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match="q_proj"):
        apply_lora(build_model(TINY, seed=0), ["wq", "q_proj"], rank=4, alpha=8.0, dropout=0.0)


@pytest.mark.parametrize("config", [TINY, ModelConfig(**{**TINY.__dict__, "n_experts": 3, "experts_per_token": 2})],
                         ids=["llama", "mixtral"])
def test_hugging_face_safetensors_round_trip(tmp_path, config):
    from safetensors import safe_open

    source = build_model(config, seed=1)
    write_hf_checkpoint(source, tmp_path / "hf")
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert "model.layers.1.self_attn.k_proj.weight" in names
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_key_value_heads"] == 2

    target = build_model(config, seed=2)
    load_hf_checkpoint(target, tmp_path / "hf")
    x = tokens()
    assert torch.equal(target(x), source(x))


def test_hugging_face_dir_of_another_shape_is_refused_with_the_key(tmp_path):
    write_hf_checkpoint(build_model(TINY, seed=1), tmp_path / "hf")
    wider = ModelConfig(**{**TINY.__dict__, "ffn_dim": 96})
    with pytest.raises(ValueError, match="intermediate_size"):
        load_hf_checkpoint(build_model(wider, seed=0), tmp_path / "hf")


def test_hf_names_follow_the_transformers_layout():
    assert hf_name("layers.3.feed_forward.w1.weight") == "model.layers.3.mlp.gate_proj.weight"
    assert hf_name("layers.0.feed_forward.experts.5.w2.weight") == "model.layers.0.block_sparse_moe.experts.5.w2.weight"
    assert hf_name("layers.2.ffn_norm.weight") == "model.layers.2.post_attention_layernorm.weight"
