"""`pitstop recipes …` through click's CliRunner. Nothing here runs Slurm: launches are
dry runs, or go to a stand-in for the submit function that records what it was given."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pitstop.cli import cli
from pitstop.recipes import launch as launcher
from pitstop.recipes.cli import recipes
from pitstop.recipes.compose import compose, recipe_names

TINY = "llama3-tiny-seq256-cpu-pretrain"
GPU = "llama3-8b-seq8k-gpu-pretrain"


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """Invoke `pitstop recipes ARGS` in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(recipes, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture()
def no_submit(monkeypatch):
    """Fail the test if anything tries to submit."""
    def refuse(script_path, cwd):
        raise AssertionError(f"submitted {script_path}")

    monkeypatch.setattr(launcher, "_slurm_submit", refuse)


@pytest.fixture()
def fake_submit(monkeypatch):
    calls = []

    def submit(script_path, cwd):
        calls.append((Path(script_path), Path(cwd)))
        return "1234"

    monkeypatch.setattr(launcher, "_slurm_submit", submit)
    return calls


def test_the_pitstop_cli_mounts_the_group():
    result = CliRunner().invoke(cli, ["recipes", "--help"])
    assert result.exit_code == 0
    for command in ("list", "show", "validate", "render", "launch", "data"):
        assert command in result.output


def test_list(run):
    result = run("list")
    assert result.exit_code == 0
    for name in recipe_names():
        assert name in result.output


def test_list_json(run):
    result = run("list", "--json")
    assert result.exit_code == 0
    found = {entry["name"]: entry for entry in json.loads(result.output)}
    assert set(found) == set(recipe_names())
    assert set(found[TINY]) == {"name", "description", "hardware", "task", "path", "error"}
    assert found[TINY]["task"] == "pretrain" and found[TINY]["error"] is None


def test_show_prints_the_resolved_config(run):
    result = run("show", TINY, "trainer.max_steps=7", "+cluster.extra=1", "~cluster.extra")
    assert result.exit_code == 0
    shown = yaml.safe_load(result.output)
    assert shown == compose(TINY, ["trainer.max_steps=7"])
    assert shown["trainer"]["max_steps"] == 7


def test_validate_ok(run):
    result = run("validate", GPU)
    assert result.exit_code == 0
    assert f"{GPU}: ok" in result.output


@pytest.mark.parametrize("overrides, expected", [
    (["cluster.nodes=0"], "cluster.nodes=0: must be ≥ 1"),
    (["parallel.fsdp=3"], "parallel.fsdp=3: does not divide the world size 16"),
    (["trainer.max_step=5"], "did you mean trainer.max_steps?"),
    (["trainer.max_steps=five"], "trainer.max_steps: expected int"),
])
def test_validate_errors_exit_2(run, overrides, expected):
    result = run("validate", GPU, *overrides)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert result.stderr.startswith(f"error: recipe {GPU}: ")


def test_unknown_recipe_exits_2(run):
    result = run("show", "no-such-recipe")
    assert result.exit_code == 2 and "no recipe named 'no-such-recipe'" in result.stderr


def test_render_writes_script_and_config(run, tmp_path, no_submit):
    result = run("render", TINY, "trainer.max_steps=5", "-o", "out",
                 "--torchrun", "/opt/venv/bin/torchrun")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["run"]["dir"] == str(out)
    assert config["trainer"]["max_steps"] == 5
    script = (out / "job.sbatch").read_text()
    assert f"export PITSTOP_RUN_DIR={out}\n" in script
    assert "/opt/venv/bin/torchrun" in script
    assert f"#SBATCH --output={out}/slurm-%j.out" in script


def test_render_error_writes_nothing(run, tmp_path):
    result = run("render", TINY, "cluster.nodes=0", "-o", "out")
    assert result.exit_code == 2 and "cluster.nodes=0" in result.stderr
    assert not (tmp_path / "out").exists()


def test_launch_dry_run_prints_the_script_and_writes_nothing(run, tmp_path, no_submit):
    result = run("launch", TINY, "--dry-run")
    assert result.exit_code == 0
    assert "#SBATCH --job-name=" + TINY in result.output
    assert "nothing written, nothing submitted" in result.output
    assert list(tmp_path.iterdir()) == []


def test_launch_dry_run_json(run, tmp_path, no_submit):
    result = run("launch", TINY, "run.dir=pinned", "--dry-run", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["job_id"] is None and data["dry_run"] is True
    assert data["run_dir"] == str(tmp_path / "pinned")
    assert "srun --kill-on-bad-exit=1" in data["script_text"]
    assert yaml.safe_load(data["config_text"])["run"]["dir"] == str(tmp_path / "pinned")
    assert not (tmp_path / "pinned").exists()


@pytest.mark.parametrize("overrides", [["cluster.nodes=0"], ["parallel.data=3"]])
def test_launch_recipe_error_exits_2_and_submits_nothing(run, tmp_path, no_submit, overrides):
    result = run("launch", TINY, *overrides)
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_launch_writes_the_run_dir_then_submits(run, tmp_path, fake_submit):
    result = run("launch", TINY, "trainer.max_steps=5", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.output)
    assert data["job_id"] == "1234"
    run_dir = Path(data["run_dir"])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith(TINY + "-")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["run"]["dir"] == str(run_dir)
    assert config["trainer"]["max_steps"] == 5
    assert fake_submit == [(run_dir / "job.sbatch", tmp_path)]
    assert f"export PITSTOP_RUN_DIR={run_dir}\n" in (run_dir / "job.sbatch").read_text()


def test_launch_plain_output_and_pinned_run_dir(run, tmp_path, fake_submit):
    result = run("launch", TINY, "run.dir=/" + str(tmp_path / "pinned").lstrip("/"))
    assert result.exit_code == 0, result.stderr
    assert "submitted job 1234" in result.output
    assert f"run dir {tmp_path / 'pinned'}" in result.output
    assert (tmp_path / "pinned" / "config.yaml").exists()


def test_launch_refuses_missing_input_dirs_before_writing(run, tmp_path, no_submit):
    result = run("launch", "llama3-tiny-seq256-cpu-lora")
    assert result.exit_code == 2
    assert "model.init_from=./models/llama3-tiny: no such directory" in result.stderr
    assert list(tmp_path.iterdir()) == []
    dry = run("launch", "llama3-tiny-seq256-cpu-lora", "--dry-run")
    assert dry.exit_code == 0 and "warning: model.init_from" in dry.stderr


def test_launch_finds_input_dirs_relative_to_the_launch_dir(run, tmp_path, fake_submit):
    (tmp_path / "models" / "llama3-tiny").mkdir(parents=True)
    (tmp_path / "tok").mkdir()
    result = run("launch", "llama3-tiny-seq256-cpu-lora", "data.source=tokens", "data.path=tok")
    assert result.exit_code == 0, result.stderr
    assert len(fake_submit) == 1


def test_two_launches_in_one_second_get_two_run_dirs(tmp_path):
    cfg = compose(TINY)
    from datetime import datetime, timezone
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first, _ = launcher.launch(cfg, chdir=tmp_path, submit=lambda s, c: "1", now=now)
    second, _ = launcher.launch(cfg, chdir=tmp_path, submit=lambda s, c: "2", now=now)
    assert first.run_dir != second.run_dir
    assert second.run_dir.name == first.run_dir.name + "-2"


def test_launch_submit_failure_exits_1(run, monkeypatch):
    def refuse(script_path, cwd):
        raise launcher.SubmitError("sbatch failed (exit 1): invalid partition")

    monkeypatch.setattr(launcher, "_slurm_submit", refuse)
    result = run("launch", TINY)
    assert result.exit_code == 1
    assert "invalid partition" in result.stderr


def test_launch_goes_through_the_core_slurm_client(run, tmp_path, monkeypatch):
    slurm = pytest.importorskip("pitstop.slurm")
    submitted = []

    class FakeSlurm:
        def submit(self, script_path, args=(), cwd=None):
            submitted.append((Path(script_path), Path(cwd)))
            if "bad" in str(script_path):
                raise slurm.SlurmError(["sbatch", "--parsable", str(script_path)], 1,
                                       "sbatch: error: invalid partition specified: nope")
            return "991"

    monkeypatch.setattr(slurm, "Slurm", FakeSlurm)
    result = run("launch", TINY, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.output)
    assert data["job_id"] == "991"
    assert submitted == [(Path(data["run_dir"]) / "job.sbatch", tmp_path)]
    failed = run("launch", TINY, "run.dir=bad")
    assert failed.exit_code == 1
    assert "sbatch failed (exit 1): sbatch: error: invalid partition specified" in failed.stderr
    assert (tmp_path / "bad" / "job.sbatch").exists()   # kept, to look at or submit by hand


def test_data_prepare_calls_the_data_module(run, tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("pitstop.recipes.data")
    fake.prepare = lambda files, out_dir: calls.append((files, out_dir))
    monkeypatch.setitem(sys.modules, "pitstop.recipes.data", fake)
    (tmp_path / "a.txt").write_text("hello")
    result = run("data", "prepare", "a.txt", "-o", "tokens")
    assert result.exit_code == 0, result.output
    assert calls == [([Path("a.txt")], Path("tokens"))]
    assert "data.path=tokens" in result.output


def test_cli_module_stays_light():
    import subprocess
    code = ("import sys, pitstop.recipes.cli; "
            "print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
