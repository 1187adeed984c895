"""Checks across keys of a well-typed resolved recipe, so a bad combination fails on the
login node, before a job waits hours in the queue only to die at its first step.

Each check names the keys and values involved and what would be accepted; every problem
is reported, not only the first.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from pitstop.recipes.yamlmarks import KeyPath

# The projections of the decoder that LoRA can adapt (attention wq wk wv wo, SwiGLU w1 w2 w3).
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
PARALLEL_DEGREES = ("fsdp", "tensor", "context", "expert")

_SLURM_TIME = re.compile(r"^(?:\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|"
                         r"\d+-\d+:\d{2}:\d{2}|UNLIMITED|INFINITE)$")
_SLURM_NAME = re.compile(r"^[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class _Problems:
    def __init__(self, cfg: dict[str, Any], origin: Callable[[KeyPath], str]) -> None:
        self.cfg = cfg
        self.origin = origin
        self.found: list[str] = []

    def get(self, dotted: str) -> Any:
        value: Any = self.cfg
        for part in dotted.split("."):
            value = value[part]
        return value

    def add(self, dotted: str, message: str) -> None:
        """A problem with the key `dotted`: `<where it was set>key=value: message`."""
        path = tuple(dotted.split("."))
        self.found.append(f"{self.origin(path)}{dotted}={_show(self.get(dotted))}: {message}")

    def at_least(self, dotted: str, low: float) -> None:
        if self.get(dotted) < low:
            self.add(dotted, f"must be ≥ {_show(low)}")

    def within(self, dotted: str, low: float, high: float, high_open: bool = False) -> None:
        value = self.get(dotted)
        if not (low <= value < high if high_open else low <= value <= high):
            self.add(dotted, f"must be in [{_show(low)}, {_show(high)}{')' if high_open else ']'}")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def check(cfg: dict[str, Any], origin: Callable[[KeyPath], str]) -> list[str]:
    """Every cross-key problem of a resolved, well-typed config (empty when it is sound)."""
    p = _Problems(cfg, origin)
    _check_identity(p)
    _check_model(p)
    _check_lora(p)
    _check_data(p)
    _check_training(p)
    _check_cluster(p)
    _check_parallel(p)
    return p.found


def _check_identity(p: _Problems) -> None:
    if not _JOB_NAME.match(p.get("name")):
        p.add("name", "must be letters, digits, '.', '_' or '-' (it becomes the Slurm job name)")


def _check_model(p: _Problems) -> None:
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size",
                "max_seq_len"):
        p.at_least(f"model.{key}", 1)
    model = p.cfg["model"]
    if model["n_heads"] >= 1 and model["n_kv_heads"] >= 1:
        if model["n_heads"] % model["n_kv_heads"]:
            p.add("model.n_kv_heads", f"must divide model.n_heads={model['n_heads']} "
                                      "(grouped-query attention)")
        if model["dim"] % model["n_heads"]:
            p.add("model.dim", f"must be a multiple of model.n_heads={model['n_heads']}")
        elif (model["dim"] // model["n_heads"]) % 2:
            p.add("model.dim", f"dim / n_heads = {model['dim'] // model['n_heads']} must be even "
                               "(rotary embeddings rotate pairs)")
    if model["rope_theta"] <= 0:
        p.add("model.rope_theta", "must be > 0")
    if not 0 < model["norm_eps"] < 1:
        p.add("model.norm_eps", "must be in (0, 1)")
    p.at_least("model.n_experts", 0)
    if model["n_experts"] > 0 and not 1 <= model["experts_per_token"] <= model["n_experts"]:
        p.add("model.experts_per_token", f"must be in [1, model.n_experts={model['n_experts']}]")
    if model["sliding_window"] is not None and model["sliding_window"] < 1:
        p.add("model.sliding_window", "must be ≥ 1, or null for full attention")
    init_from = model["init_from"]
    if init_from is not None and "://" in init_from:
        p.add("model.init_from", "must be a local directory of Hugging Face-format weights "
                                 "(safetensors); pitstop never downloads from a hub")


def _check_lora(p: _Problems) -> None:
    if p.get("task") != "lora":
        return
    if p.get("model.init_from") is None:
        p.add("model.init_from", "task lora fine-tunes pretrained weights: set model.init_from to a "
                                 "local Hugging Face-format directory (config.json + safetensors)")
    if p.get("lora.rank") <= 0:
        p.add("lora.rank", "task lora needs lora.rank > 0")
    if p.get("lora.alpha") <= 0:
        p.add("lora.alpha", "task lora needs lora.alpha > 0")
    p.within("lora.dropout", 0.0, 1.0, high_open=True)
    targets = p.get("lora.targets")
    if not targets:
        p.add("lora.targets", f"task lora needs at least one target of {', '.join(LORA_TARGETS)}")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        p.add("lora.targets", f"unknown projection(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(LORA_TARGETS)}")


def _check_data(p: _Problems) -> None:
    if p.get("data.source") == "tokens" and p.get("data.path") is None:
        p.add("data.path", "data.source is tokens, so data.path must name a directory written "
                           "by `pitstop recipes data prepare FILES -o DIR`")
    if p.get("model.vocab_size") < 256:
        p.add("model.vocab_size", "the runtime's tokens are bytes: vocab_size must be ≥ 256")
    p.at_least("data.seq_len", 1)
    if p.get("data.seq_len") > p.get("model.max_seq_len"):
        p.add("data.seq_len", f"must be ≤ model.max_seq_len={p.get('model.max_seq_len')}")
    p.at_least("data.micro_batch_size", 1)


def _check_training(p: _Problems) -> None:
    if not p.get("optimizer.lr") > 0:
        p.add("optimizer.lr", "must be > 0")
    for index, beta in enumerate(p.get("optimizer.betas")):
        if not 0 <= beta < 1:
            p.add("optimizer.betas", f"betas[{index}]={_show(beta)} must be in [0, 1)")
    if not p.get("optimizer.eps") > 0:
        p.add("optimizer.eps", "must be > 0")
    p.at_least("optimizer.weight_decay", 0)
    grad_clip = p.get("optimizer.grad_clip")
    if grad_clip is not None and not grad_clip > 0:
        p.add("optimizer.grad_clip", "must be > 0, or null for no clipping")
    p.at_least("trainer.max_steps", 1)
    p.at_least("schedule.warmup_steps", 0)
    p.within("schedule.min_lr_ratio", 0.0, 1.0)
    p.at_least("trainer.log_every", 1)
    p.at_least("trainer.checkpoint.interval", 1)
    p.at_least("trainer.checkpoint.keep", 1)
    p.at_least("trainer.step_delay", 0)
    accelerator = p.get("trainer.accelerator")
    if p.get("trainer.precision") == "bf16" and accelerator != "gpu":
        p.add("trainer.precision", f"bf16 needs trainer.accelerator=gpu (it is {accelerator}); "
                                   "use fp32 on the cpu")


LAUNCHERS = ("torchrun", "srun")


def _check_cluster(p: _Problems) -> None:
    p.at_least("cluster.nodes", 1)
    p.at_least("cluster.spare_nodes", 0)
    p.at_least("cluster.procs_per_node", 1)
    p.at_least("cluster.gpus_per_node", 0)
    if p.get("cluster.cpus_per_task") is not None:
        p.at_least("cluster.cpus_per_task", 1)
    accelerator = p.get("trainer.accelerator")
    gpus, procs = p.get("cluster.gpus_per_node"), p.get("cluster.procs_per_node")
    if accelerator == "gpu" and gpus < 1:
        p.add("cluster.gpus_per_node", "trainer.accelerator is gpu, so each node needs ≥ 1 GPU")
    elif accelerator == "gpu" and procs > gpus:
        p.add("cluster.procs_per_node", f"one process per GPU: must be ≤ "
                                        f"cluster.gpus_per_node={gpus}")
    for key in ("partition", "reservation"):
        value = p.get(f"cluster.{key}")
        if value is not None and not _SLURM_NAME.match(value):
            p.add(f"cluster.{key}", "must be a Slurm name (letters, digits, '.', '_', '-'; "
                                    "a comma between several)")
    if not _SLURM_TIME.match(p.get("cluster.time")):
        p.add("cluster.time", "must be a Slurm time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
                              "D-HH:MM:SS (quote it in YAML)")
    p.at_least("cluster.max_restarts", 0)
    p.at_least("cluster.signal_seconds", 1)
    p.within("cluster.rdzv_port", 1, 65535)
    if p.get("cluster.launcher") not in LAUNCHERS:
        p.add("cluster.launcher", f"must be one of {', '.join(LAUNCHERS)} (torchrun: one agent a node "
                                  "that starts the ranks; srun: srun starts every rank itself)")
    elif p.get("cluster.warm_start") is True and p.get("cluster.launcher") != "srun":
        p.add("cluster.warm_start", "needs cluster.launcher: srun (torchrun starts its ranks itself, "
                                    "cold, on every restart)")


def _check_parallel(p: _Problems) -> None:
    nodes, procs = p.get("cluster.nodes"), p.get("cluster.procs_per_node")
    if nodes < 1 or procs < 1:
        return
    world = nodes * procs
    world_text = f"the world size {world} (cluster.nodes={nodes} × cluster.procs_per_node={procs})"
    product = 1
    for degree in PARALLEL_DEGREES:
        value = p.get(f"parallel.{degree}")
        if value < 1:
            p.add(f"parallel.{degree}", "must be ≥ 1")
            return
        if world % value:
            p.add(f"parallel.{degree}", f"does not divide {world_text}")
            return
        product *= value
    if world % product:
        p.add("parallel.fsdp", f"fsdp × tensor × context × expert = {product} does not divide "
                               f"{world_text}")
        return
    data = p.get("parallel.data")
    if data != -1 and data < 1:
        p.add("parallel.data", "must be ≥ 1, or -1 for world size / (fsdp × tensor × context × "
                               "expert)")
    elif data != -1 and data * product != world:
        p.add("parallel.data", f"data × fsdp × tensor × context × expert = {data * product} "
                               f"must equal {world_text}; set parallel.data=-1 to derive it")
    if p.get("parallel.fsdp") > 1 and p.get("trainer.accelerator") != "gpu":
        p.add("parallel.fsdp", "FSDP runs on gpu only; on the cpu use parallel.fsdp=1 (DDP)")
    expert = p.get("parallel.expert")
    n_experts = p.get("model.n_experts")
    if expert > 1 and (n_experts == 0 or n_experts % expert):
        p.add("parallel.expert", f"must divide model.n_experts={n_experts}")
