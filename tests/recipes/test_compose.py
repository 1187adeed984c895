"""Composition: the collection, overrides, interpolation and the errors a user sees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pitstop.recipes import schema
from pitstop.recipes.compose import (COLLECTION, compose, list_recipes, recipe_names,
                                     to_yaml)
from pitstop.recipes.errors import RecipeError

TINY = "llama3-tiny-seq256-cpu-pretrain"
TINY_LORA = "llama3-tiny-seq256-cpu-lora"
EXPECTED = {
    "llama3-8b-seq8k-gpu-pretrain", "llama3-70b-seq8k-gpu-pretrain",
    "llama3-8b-seq8k-gpu-lora", "mistral-7b-seq8k-gpu-pretrain",
    "mixtral-8x7b-seq4k-gpu-pretrain", TINY, TINY_LORA,
}
SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "recipe-schema.md"


def _doc_example() -> dict:
    text = SCHEMA_DOC.read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "docs/recipe-schema.md lost its yaml block"
    return yaml.safe_load(block.group(1))


def _key_tree(cfg: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in cfg.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _key_tree(value, prefix + key + ".")
    return keys


def _error(name: str, overrides: list[str]) -> str:
    with pytest.raises(RecipeError) as caught:
        compose(name, overrides)
    return str(caught.value)


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


TINY_DEFAULTS = """\
defaults:
  - model: llama3-tiny
  - data: stdlib
  - trainer: cpu
  - cluster: cpu-testbed
  - _self_
description: a test recipe
hardware: a laptop
task: pretrain
"""


# --- the collection -------------------------------------------------------------------

def test_the_collection_holds_the_named_recipes():
    assert set(recipe_names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_recipe_composes_to_exactly_the_documented_keys(name):
    cfg = compose(name)
    assert _key_tree(cfg) == _key_tree(_doc_example())
    assert cfg["name"] == name
    assert cfg["description"] and cfg["hardware"]
    assert cfg["task"] == name.rsplit("-", 1)[1]
    assert cfg["trainer"]["accelerator"] == name.split("-")[3]
    assert yaml.safe_load(to_yaml(cfg)) == cfg


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_runtime_accepts_every_composed_recipe(name):
    runconfig = pytest.importorskip("pitstop.recipes.runconfig")
    cfg = compose(name)
    assert runconfig.check(yaml.safe_load(to_yaml(cfg))) == cfg


def test_schema_table_matches_the_documented_contract():
    assert set(schema.all_keys()) == _key_tree(_doc_example())


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if "-gpu-" in n))
def test_gpu_recipes_are_bf16_on_8_gpu_nodes_with_dividing_fsdp(name):
    cfg = compose(name)
    cluster, parallel = cfg["cluster"], cfg["parallel"]
    world = cluster["nodes"] * cluster["procs_per_node"]
    assert cfg["trainer"]["precision"] == "bf16"
    assert cluster["gpus_per_node"] == cluster["procs_per_node"] == 8
    assert world % parallel["fsdp"] == 0
    assert cluster["exclusive"] is True


@pytest.mark.parametrize("name, shape", [
    ("llama3-8b-seq8k-gpu-pretrain", (4096, 32, 32, 8, 14336, 128256)),
    ("llama3-70b-seq8k-gpu-pretrain", (8192, 80, 64, 8, 28672, 128256)),
    ("mistral-7b-seq8k-gpu-pretrain", (4096, 32, 32, 8, 14336, 32768)),
    ("mixtral-8x7b-seq4k-gpu-pretrain", (4096, 32, 32, 8, 14336, 32000)),
])
def test_real_models_have_their_published_shapes(name, shape):
    model = compose(name)["model"]
    keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size")
    assert tuple(model[k] for k in keys) == shape
    seq = int(re.search(r"seq(\d+)k", name).group(1)) * 1024
    assert model["max_seq_len"] == seq == compose(name)["data"]["seq_len"]


def test_model_specifics():
    assert compose("llama3-8b-seq8k-gpu-pretrain")["model"]["rope_theta"] == 500000.0
    assert compose("mistral-7b-seq8k-gpu-pretrain")["model"]["sliding_window"] == 4096
    mixtral = compose("mixtral-8x7b-seq4k-gpu-pretrain")["model"]
    assert (mixtral["n_experts"], mixtral["experts_per_token"]) == (8, 2)
    assert compose("llama3-8b-seq8k-gpu-lora")["lora"]["rank"] > 0


def test_tiny_recipe_fits_the_testbed():
    cfg = compose(TINY)
    assert (cfg["cluster"]["nodes"], cfg["cluster"]["procs_per_node"],
            cfg["cluster"]["gpus_per_node"]) == (2, 2, 0)
    assert cfg["trainer"]["checkpoint"]["interval"] == 10
    assert cfg["trainer"]["precision"] == "fp32"
    model = cfg["model"]
    per_layer = (2 * model["dim"] ** 2 + 2 * model["dim"] * model["dim"] // model["n_heads"]
                 * model["n_kv_heads"] + 3 * model["dim"] * model["ffn_dim"])
    params = model["n_layers"] * per_layer + 2 * model["vocab_size"] * model["dim"]
    assert 1_000_000 < params < 10_000_000
    assert compose(TINY_LORA)["task"] == "lora"


def test_list_recipes_describes_each_recipe():
    found = {info.name: info for info in list_recipes()}
    assert set(found) == EXPECTED
    tiny = found[TINY]
    assert tiny.task == "pretrain" and tiny.error is None
    assert tiny.description and tiny.hardware
    assert tiny.path == COLLECTION / f"{TINY}.yaml"
    assert tiny.to_json()["path"] == str(tiny.path)


# --- overrides ------------------------------------------------------------------------

def test_set_override_parses_yaml_scalars():
    cfg = compose(TINY, ["trainer.max_steps=5", "optimizer.lr=3e-4", "cluster.time=1:00:00",
                         "lora.targets=[wq,wk]", "cluster.partition=debug",
                         "trainer.tensorboard=false"])
    assert cfg["trainer"]["max_steps"] == 5
    assert cfg["optimizer"]["lr"] == pytest.approx(3e-4)
    assert cfg["cluster"]["time"] == "1:00:00"
    assert cfg["lora"]["targets"] == ["wq", "wk"]
    assert cfg["cluster"]["partition"] == "debug"
    assert cfg["trainer"]["tensorboard"] is False


def test_ints_become_floats_where_floats_are_expected():
    cfg = compose(TINY, ["optimizer.lr=1", "model.rope_theta=10000"])
    assert isinstance(cfg["optimizer"]["lr"], float)
    assert isinstance(cfg["model"]["rope_theta"], float)


def test_set_override_of_a_missing_key_suggests_the_nearest():
    message = _error(TINY, ["trainer.max_step=5"])
    assert "trainer.max_step" in message
    assert "did you mean trainer.max_steps?" in message
    assert "override 'trainer.max_step=5'" in message


def test_add_override_of_an_unknown_key_fails_schema_with_suggestion():
    message = _error(TINY, ["+trainer.max_step=5"])
    assert "trainer.max_step: unknown key; did you mean trainer.max_steps?" in message


def test_add_override_of_an_existing_key_is_an_error():
    message = _error(TINY, ["+trainer.max_steps=5"])
    assert "already exists" in message and "trainer.max_steps=5" in message


def test_delete_override_removes_a_key():
    # Deleting a schema key leaves the config incomplete: the error says who deleted it.
    message = _error(TINY, ["~cluster.partition"])
    assert "cluster.partition: missing" in message
    assert "deleted by override '~cluster.partition'" in message
    # Deleting a key a user added is the ordinary use.
    cfg = compose(TINY, ["+cluster.extra=1", "~cluster.extra"])
    assert "extra" not in cfg["cluster"]


def test_delete_override_with_a_value_checks_it():
    assert "not 3" in _error(TINY, ["+cluster.extra=1", "~cluster.extra=3"])
    assert "extra" not in compose(TINY, ["+cluster.extra=1", "~cluster.extra=1"])["cluster"]


def test_delete_of_a_missing_key_is_an_error():
    assert "no key cluster.nodez to delete; did you mean cluster.nodes?" in _error(
        TINY, ["~cluster.nodez"])


def test_force_override_sets_either_way():
    assert compose(TINY, ["++trainer.max_steps=7"])["trainer"]["max_steps"] == 7


def test_malformed_overrides_say_what_is_expected():
    assert "missing '=value'" in _error(TINY, ["trainer.max_steps"])
    assert "expected key=value" in _error(TINY, ["=5"])
    assert "not valid YAML" in _error(TINY, ["cluster.nodes=[1"])
    assert "no key trainr in the config; did you mean trainer?" in _error(
        TINY, ["trainr.max_steps=1"])


def test_group_option_override_swaps_a_defaults_entry():
    cfg = compose(TINY, ["cluster=gpu-p5", "trainer=gpu-bf16", "data.source=stdlib",
                         "data.path=null"])
    assert cfg["cluster"]["gpus_per_node"] == 8
    assert cfg["trainer"]["precision"] == "bf16"
    message = _error(TINY, ["model=llama3-8x"])
    assert "no model option 'llama3-8x'; did you mean llama3-8b?" in message


def test_later_override_wins():
    assert compose(TINY, ["trainer.max_steps=5", "trainer.max_steps=6"])["trainer"][
        "max_steps"] == 6


# --- interpolation --------------------------------------------------------------------

def test_interpolation_follows_overrides():
    cfg = compose(TINY, ["model.max_seq_len=128"])
    assert cfg["data"]["seq_len"] == 128


def test_interpolation_in_overrides_and_strings():
    cfg = compose(TINY, ["run.root=/scratch/${name}", "trainer.max_steps=${trainer.checkpoint.interval}"])
    assert cfg["run"]["root"] == f"/scratch/{TINY}"
    assert cfg["trainer"]["max_steps"] == 10


def test_interpolation_of_a_missing_key_names_it_and_suggests():
    message = _error(TINY, ["data.seq_len=${model.max_seq}"])
    assert "data.seq_len: cannot interpolate '${model.max_seq}'" in message
    assert "did you mean model.max_seq_len?" in message


def test_recursive_interpolation_is_an_error():
    assert "Recursive interpolation" in _error(TINY, ["data.seed=${data.seed}"])


# --- types and semantics --------------------------------------------------------------

def test_wrong_type_names_the_key_and_the_expected_type():
    message = _error(TINY, ["trainer.max_steps=five"])
    assert "trainer.max_steps: expected int, got str 'five'" in message
    assert "expected bool" in _error(TINY, ["trainer.tensorboard=3"])
    assert "expected int, got bool" in _error(TINY, ["cluster.nodes=true"])
    assert "expected pretrain | lora" in _error(TINY, ["task=finetune"])
    assert "expected list[float] of length 2" in _error(TINY, ["optimizer.betas=[0.9]"])
    assert "cluster: expected a mapping" in _error(TINY, ["cluster=3"])


def test_every_problem_is_reported_at_once():
    message = _error(TINY, ["trainer.max_steps=five", "cluster.nodes=two"])
    assert "2 problems" in message
    assert "trainer.max_steps" in message and "cluster.nodes" in message


@pytest.mark.parametrize("overrides, expected", [
    (["cluster.nodes=0"], "cluster.nodes=0: must be ≥ 1"),
    (["cluster.procs_per_node=0"], "cluster.procs_per_node=0: must be ≥ 1"),
    (["parallel.data=3"], "must equal the world size 4"),
    (["parallel.tensor=3"], "parallel.tensor=3: does not divide the world size 4 "
                            "(cluster.nodes=2 × cluster.procs_per_node=2)"),
    (["parallel.fsdp=2"], "FSDP runs on gpu only"),
    (["trainer.precision=bf16"], "bf16 needs trainer.accelerator=gpu"),
    (["task=lora", "lora.rank=0"], "task lora needs lora.rank > 0"),
    (["task=lora"], "task lora fine-tunes pretrained weights: set model.init_from"),
    (["model.vocab_size=100"], "vocab_size must be ≥ 256"),
    (["optimizer.grad_clip=0"], "must be > 0, or null for no clipping"),
    (["task=lora", "lora.targets=[wq,wz]"], "unknown projection(s) wz"),
    (["data.source=tokens"], "data.path must name a directory"),
    (["model.n_kv_heads=3"], "must divide model.n_heads=8"),
    (["data.seq_len=512"], "must be ≤ model.max_seq_len=256"),
    (["cluster.time=soon"], "must be a Slurm time"),
    (["cluster.partition=a b"], "must be a Slurm name"),
    (["schedule.min_lr_ratio=2"], "schedule.min_lr_ratio=2: must be in [0, 1]"),
    (["trainer.accelerator=gpu"], "each node needs ≥ 1 GPU"),
    (["model.init_from=https://huggingface.co/x"], "never downloads from a hub"),
])
def test_semantic_checks(overrides, expected):
    assert expected in _error(TINY, overrides)


def test_parallel_degrees_on_gpu():
    name = "llama3-8b-seq8k-gpu-pretrain"
    assert "parallel.fsdp=3: does not divide the world size 16" in _error(
        name, ["parallel.fsdp=3"])
    cfg = compose(name, ["parallel.fsdp=16"])
    assert cfg["parallel"]["fsdp"] == 16
    compose(name, ["parallel.data=2"])
    assert "must equal" in _error(name, ["parallel.data=4"])
    assert "must divide model.n_experts=0" in _error(name, ["parallel.expert=2"])


def test_semantic_error_names_the_file_and_line_that_set_the_value(tmp_path):
    _write(tmp_path, "cluster/broken.yaml", "nodes: 2\nprocs_per_node: 0\n")
    recipe = _write(tmp_path, "r.yaml", TINY_DEFAULTS.replace("cpu-testbed", "broken"))
    message = _error(str(recipe), [])
    assert re.search(r"cluster/broken\.yaml:2: cluster\.procs_per_node=0: must be ≥ 1", message)


# --- errors in recipe files -----------------------------------------------------------

def test_yaml_error_names_the_file_and_line(tmp_path):
    recipe = _write(tmp_path, "bad.yaml", TINY_DEFAULTS + "optimizer:\n  betas: [0.9\n  lr: 1\n")
    message = _error(str(recipe), [])
    assert re.search(r"bad\.yaml:1[23]: YAML error", message), message


def test_duplicate_key_is_an_error_with_both_lines(tmp_path):
    recipe = _write(tmp_path, "dup.yaml", TINY_DEFAULTS + "task: lora\n")
    message = _error(str(recipe), [])
    assert "dup.yaml:10: duplicate key task (first set on line 9)" in message


def test_unknown_key_in_a_file_names_file_line_and_suggestion(tmp_path):
    recipe = _write(tmp_path, "typo.yaml", TINY_DEFAULTS + "trainer:\n  max_step: 5\n")
    message = _error(str(recipe), [])
    assert "typo.yaml:11: trainer.max_step: unknown key; did you mean trainer.max_steps?" in message


def test_wrong_type_in_a_group_file_names_its_line(tmp_path):
    _write(tmp_path, "trainer/mine.yaml", "accelerator: cpu\ncheckpoint:\n  interval: ten\n")
    recipe = _write(tmp_path, "r.yaml", TINY_DEFAULTS.replace("trainer: cpu", "trainer: mine"))
    message = _error(str(recipe), [])
    assert re.search(r"trainer/mine\.yaml:3: trainer\.checkpoint\.interval: expected int, "
                     r"got str 'ten'", message)


def test_unknown_group_option_names_the_defaults_line(tmp_path):
    recipe = _write(tmp_path, "r.yaml", TINY_DEFAULTS.replace("data: stdlib", "data: stdlb"))
    message = _error(str(recipe), [])
    assert "r.yaml:3: no data option 'stdlb'; did you mean stdlib?" in message


def test_missing_required_key_says_where_to_set_it(tmp_path):
    recipe = _write(tmp_path, "r.yaml", TINY_DEFAULTS.replace("hardware: a laptop\n", ""))
    assert "hardware: missing (expected str); set it in the recipe" in _error(str(recipe), [])


def test_bad_defaults_entry(tmp_path):
    recipe = _write(tmp_path, "r.yaml", "defaults:\n  - [model]\n" + TINY_DEFAULTS[10:])
    assert "r.yaml:2: defaults entry ['model']: expected `- group: option`" in _error(
        str(recipe), [])


def test_self_first_lets_groups_override_the_recipe(tmp_path):
    text = TINY_DEFAULTS.replace("  - _self_\n", "").replace("defaults:\n",
                                                             "defaults:\n  - _self_\n")
    recipe = _write(tmp_path, "r.yaml", text + "trainer:\n  max_steps: 999\n")
    assert compose(str(recipe))["trainer"]["max_steps"] == 60
    recipe = _write(tmp_path, "s.yaml", TINY_DEFAULTS.replace("  - _self_\n", "")
                    + "trainer:\n  max_steps: 999\n")
    assert compose(str(recipe))["trainer"]["max_steps"] == 999   # implicit _self_ is last


def test_group_files_can_extend_an_option_of_their_group(tmp_path):
    _write(tmp_path, "model/deeper.yaml", "defaults:\n  - llama3-tiny\n  - _self_\nn_layers: 8\n")
    recipe = _write(tmp_path, "r.yaml", TINY_DEFAULTS.replace("llama3-tiny", "deeper"))
    model = compose(str(recipe))["model"]
    assert (model["n_layers"], model["dim"]) == (8, 256)


def test_defaults_cycle_is_an_error(tmp_path):
    _write(tmp_path, "model/a.yaml", "defaults:\n  - b\n")
    _write(tmp_path, "model/b.yaml", "defaults:\n  - a\n")
    recipe = _write(tmp_path, "r.yaml", TINY_DEFAULTS.replace("llama3-tiny", "a"))
    assert "defaults form a cycle" in _error(str(recipe), [])


def test_unknown_recipe_name_suggests_one():
    message = _error("llama3-tiny-seq256-cpu-pretrian", [])
    assert "no recipe named" in message and f"did you mean {TINY}?" in message
    assert "no such recipe file" in _error("/nonexistent/recipe.yaml", [])


def test_yaml_12_numbers():
    cfg = compose(TINY, ["optimizer.eps=1e-6", "cluster.time=01:00:00"])
    assert cfg["optimizer"]["eps"] == pytest.approx(1e-6)
    assert cfg["cluster"]["time"] == "01:00:00"
