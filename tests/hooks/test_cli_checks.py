"""`pitstop check list | quick | full` as a user runs them: output, JSON, exit codes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pitstop.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_list_shows_every_check_with_level_and_threshold(tmp_path):
    config = tmp_path / "hooks.yaml"
    config.write_text("expected_gpus: 8\nmin_free: {/scratch: 10%}\n")
    result = invoke("check", "list", "--config", str(config), "--json")
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert result.exit_code == 0
    assert rows["gpu_count"]["threshold"] == "≥8" and rows["gpu_count"]["level"] == "quick"
    assert rows["disk_free"]["threshold"] == "/scratch ≥10%"
    assert rows["matmul"]["level"] == "full" and "GFLOP" in rows["matmul"]["description"]
    text = invoke("check", "list").output
    assert "quick  disk_free" in text and "full   allreduce" in text


def test_quick_exits_0_on_pass_and_1_on_fail_with_json(tmp_path):
    good = invoke("check", "quick", "--json", "--config", str(_config(tmp_path, "0%")))
    bad = invoke("check", "quick", "--json", "--config", str(_config(tmp_path, "1000TiB")))
    assert good.exit_code == 0 and json.loads(good.output)["status"] == "pass"
    report = json.loads(bad.output)
    assert bad.exit_code == 1 and report["status"] == "fail"
    (disk,) = [r for r in report["results"] if r["name"] == "disk_free"]
    assert disk["status"] == "fail" and disk["threshold"] == "1000.0TiB" and disk["unit"] == "bytes"


def test_a_broken_settings_file_is_a_usage_error_naming_the_line(tmp_path):
    config = tmp_path / "hooks.yaml"
    config.write_text("expected_gpus: 8\nmin_fre: {}\n")
    result = invoke("check", "quick", "--config", str(config))
    assert result.exit_code == 2 and f"{config}:2: min_fre: unknown setting" in result.output


def test_hooks_with_a_broken_settings_file_let_the_job_run(tmp_path):
    config = tmp_path / "hooks.yaml"
    config.write_text("expected_gpus: [\n")
    result = invoke("hooks", "prolog", "--config", str(config), "--node", "node1")
    assert result.exit_code == 0 and "settings unusable, checks skipped" in result.output


def _config(tmp_path, amount):
    path = tmp_path / f"hooks-{amount.replace('%', 'pct')}.yaml"
    path.write_text(f"min_free: {{{tmp_path}: {amount}}}\n")
    return path
