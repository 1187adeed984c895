"""The decoder every recipe trains: a Llama-style transformer in plain PyTorch.

One module covers the three families of the collection: llama (RMSNorm, rotary
embeddings, SwiGLU, grouped-query attention), mistral (the same with a sliding attention
window) and mixtral (a mixture-of-experts FFN with top-k routing). Parameter names follow
Meta's reference implementation (`layers.N.attention.wq`, `feed_forward.w1` …) so that
`pitstop.recipes.lora` can map them one-to-one to Hugging Face's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    n_experts: int = 0
    experts_per_token: int = 2
    sliding_window: int | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_section(cls, model: dict) -> "ModelConfig":
        """From the resolved config's `model:` section (keys already validated)."""
        return cls(**{name: model[name] for name in cls.__dataclass_fields__})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (max_seq_len, head_dim), in Hugging Face's half-split layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, heads, seq, head_dim) by position; cos/sin are (seq, head_dim)."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    return (x * cos + rotated_half * sin).type_as(x)


def attention_mask(seq_len: int, sliding_window: int | None, device: torch.device) -> torch.Tensor | None:
    """Boolean (seq, seq) mask, True where a query may attend; None means plain causal."""
    if sliding_window is None:
        return None
    position = torch.arange(seq_len, device=device)
    distance = position[:, None] - position[None, :]
    return (distance >= 0) & (distance < sliding_window)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.wq(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = self.n_heads // self.n_kv_heads
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def route_tokens(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral routing: each token's top-k experts and their weights (softmax over the k)."""
    top_logits, top_experts = router_logits.topk(k, dim=-1)
    return top_logits.softmax(dim=-1, dtype=torch.float32), top_experts


class MoEFeedForward(nn.Module):
    """A mixture of SwiGLU experts; each token goes to its top-k experts."""

    def __init__(self, dim: int, hidden: int, n_experts: int, experts_per_token: int):
        super().__init__()
        self.experts_per_token = experts_per_token
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(dim, hidden) for _ in range(n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        weights, chosen = route_tokens(self.gate(tokens), self.experts_per_token)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            # An expert with no tokens still runs on an empty batch, so every rank's
            # graph holds every parameter and DDP needs no unused-parameter search.
            token_ids, slot = (chosen == index).nonzero(as_tuple=True)
            contribution = expert(tokens[token_ids]) * weights[token_ids, slot, None].type_as(tokens)
            out.index_add_(0, token_ids, contribution)
        return out.view_as(x)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        if config.n_experts > 0:
            self.feed_forward: nn.Module = MoEFeedForward(config.dim, config.ffn_dim,
                                                          config.n_experts, config.experts_per_token)
        else:
            self.feed_forward = FeedForward(config.dim, config.ffn_dim)

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.dim % config.n_heads or config.n_heads % config.n_kv_heads or config.head_dim % 2:
            raise ValueError("dim must divide into n_heads heads of even size, "
                             "and n_heads into n_kv_heads groups")
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[1]
        if seq > self.config.max_seq_len:
            raise ValueError(f"sequence of {seq} tokens exceeds model.max_seq_len={self.config.max_seq_len}")
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        mask = attention_mask(seq, self.config.sliding_window, tokens.device)
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.output(self.norm(x))


def init_weights(model: Transformer, seed: int) -> None:
    """Deterministic initialisation: the same seed gives the same weights on every rank."""
    generator = torch.Generator().manual_seed(seed)
    depth_scale = 1.0 / math.sqrt(2 * model.config.n_layers)
    for name, param in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            nn.init.ones_(param)
            continue
        std = 0.02 * depth_scale if name.endswith(("wo.weight", "w2.weight")) else 0.02
        with torch.no_grad():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_model(config: ModelConfig, seed: int) -> Transformer:
    model = Transformer(config)
    init_weights(model, seed)
    return model
