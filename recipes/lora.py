"""Fine-tuning: start from pretrained weights on local disk and train low-rank adapters.

`task: lora` recipes load `model.init_from`, a Hugging Face-format directory
(config.json plus *.safetensors) that lies on the cluster's file system — pitstop never
fetches from a hub — then freeze the base and wrap the projections named in
`lora.targets` with adapters, so only the adapters are trained, optimised and
checkpointed. `write_hf_checkpoint` produces such a directory from one of our models
(tests use it to make a tiny "pretrained" model).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from pitstop.fsutil import write_json_atomic
from pitstop.recipes.model import ModelConfig, Transformer


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: W x + (alpha/r) B A x."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_a.t() @ self.lora_b.t()
        return self.base(x) + update * self.scale


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float,
               seed: int = 0) -> list[str]:
    """Freeze every parameter of model, then wrap each nn.Linear whose own name is in
    targets (wq, wv, w1 …) with an adapter. Returns the wrapped modules' names."""
    for param in model.parameters():
        param.requires_grad_(False)
    wanted = set(targets)
    matches = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted]
    found = {name.rsplit(".", 1)[-1] for name, _ in matches}
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(f"lora.targets: no linear layer named {', '.join(missing)} in the model")
    torch.manual_seed(seed)
    for name, module in matches:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha, dropout))
    return [name for name, _ in matches]


# Our parameter names to Hugging Face Llama/Mistral/Mixtral names; {n} is a layer, {e} an expert.
_TO_HF = [
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("layers.{n}.attention.wq.weight", "model.layers.{n}.self_attn.q_proj.weight"),
    ("layers.{n}.attention.wk.weight", "model.layers.{n}.self_attn.k_proj.weight"),
    ("layers.{n}.attention.wv.weight", "model.layers.{n}.self_attn.v_proj.weight"),
    ("layers.{n}.attention.wo.weight", "model.layers.{n}.self_attn.o_proj.weight"),
    ("layers.{n}.attention_norm.weight", "model.layers.{n}.input_layernorm.weight"),
    ("layers.{n}.ffn_norm.weight", "model.layers.{n}.post_attention_layernorm.weight"),
    ("layers.{n}.feed_forward.w1.weight", "model.layers.{n}.mlp.gate_proj.weight"),
    ("layers.{n}.feed_forward.w2.weight", "model.layers.{n}.mlp.down_proj.weight"),
    ("layers.{n}.feed_forward.w3.weight", "model.layers.{n}.mlp.up_proj.weight"),
    ("layers.{n}.feed_forward.gate.weight", "model.layers.{n}.block_sparse_moe.gate.weight"),
    ("layers.{n}.feed_forward.experts.{e}.w1.weight", "model.layers.{n}.block_sparse_moe.experts.{e}.w1.weight"),
    ("layers.{n}.feed_forward.experts.{e}.w2.weight", "model.layers.{n}.block_sparse_moe.experts.{e}.w2.weight"),
    ("layers.{n}.feed_forward.experts.{e}.w3.weight", "model.layers.{n}.block_sparse_moe.experts.{e}.w3.weight"),
]


def _name_pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{e\}", r"(?P<e>\d+)")
    return re.compile(f"^{escaped}$")


_OURS_TO_HF = [(_name_pattern(ours), hf) for ours, hf in _TO_HF]
_HF_TO_OURS = [(_name_pattern(hf), ours) for ours, hf in _TO_HF]


def _translate(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in table:
        match = pattern.match(name)
        if match:
            return template.format(**match.groupdict())
    return None


def hf_name(our_name: str) -> str:
    translated = _translate(our_name, _OURS_TO_HF)
    if translated is None:
        raise KeyError(f"no Hugging Face name for parameter {our_name}")
    return translated


def our_name(hf_param_name: str) -> str | None:
    """Our name for a Hugging Face parameter; None for one we do not model (rotary caches)."""
    return _translate(hf_param_name, _HF_TO_OURS)


def hf_config(config: ModelConfig) -> dict:
    moe = config.n_experts > 0
    architecture = "MixtralForCausalLM" if moe else ("MistralForCausalLM" if config.sliding_window else "LlamaForCausalLM")
    out = {
        "architectures": [architecture],
        "model_type": architecture.removesuffix("ForCausalLM").lower(),
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "intermediate_size": config.ffn_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.norm_eps,
        "sliding_window": config.sliding_window,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    if moe:
        out["num_local_experts"] = config.n_experts
        out["num_experts_per_tok"] = config.experts_per_token
    return out


# Hugging Face config key -> our ModelConfig field, for the shape check on load.
_SHAPE_KEYS = {
    "hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads", "intermediate_size": "ffn_dim", "vocab_size": "vocab_size",
    "num_local_experts": "n_experts",
}


def write_hf_checkpoint(model: Transformer, out_dir: Path) -> Path:
    """Write model as a Hugging Face-format directory: config.json and model.safetensors."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {hf_name(name): tensor.detach().cpu().contiguous()
               for name, tensor in model.state_dict().items()}
    tmp = out_dir / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / "model.safetensors")
    write_json_atomic(out_dir / "config.json", hf_config(model.config), indent=2)
    return out_dir


def load_hf_checkpoint(model: Transformer, hf_dir: Path) -> None:
    """Copy the weights of a local Hugging Face-format directory into model (before LoRA
    is applied). Every parameter of model must be found, with the same shape."""
    from safetensors import safe_open

    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"model.init_from: {hf_dir} is not a directory")
    config_path = hf_dir / "config.json"
    if config_path.exists():
        theirs = json.loads(config_path.read_text())
        for hf_key, field in _SHAPE_KEYS.items():
            ours = getattr(model.config, field)
            if field == "n_experts" and hf_key not in theirs:
                continue
            if theirs.get(hf_key, ours) != ours:
                raise ValueError(f"model.init_from: {hf_dir} has {hf_key}={theirs[hf_key]}, "
                                 f"the recipe has model.{field}={ours}")
        tied = bool(theirs.get("tie_word_embeddings", False))
    else:
        tied = False
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"model.init_from: no *.safetensors files in {hf_dir}")
    loaded: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                name = our_name(key)
                if name is not None:
                    loaded[name] = handle.get_tensor(key)
    if tied and "output.weight" not in loaded and "tok_embeddings.weight" in loaded:
        loaded["output.weight"] = loaded["tok_embeddings.weight"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise ValueError(f"model.init_from: {hf_dir} lacks {len(missing)} parameters, "
                         f"first {hf_name(missing[0])}")
    for name, tensor in expected.items():
        if loaded[name].shape != tensor.shape:
            raise ValueError(f"model.init_from: {hf_name(name)} has shape {tuple(loaded[name].shape)}, "
                             f"the model expects {tuple(tensor.shape)}")
    model.load_state_dict({name: loaded[name].to(expected[name].dtype) for name in expected})
