"""The hooks' settings file and the per-model thresholds file: parsing and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitstop.hooks.config import Amount, DataFileError, load_config
from pitstop.hooks.thresholds import Limit, for_model, load_thresholds, parse_thresholds
from pitstop.hooks.datafile import load_text


def write(tmp_path: Path, text: str, name: str = "hooks.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_settings_with_per_node_overrides(tmp_path):
    path = write(tmp_path, "expected_gpus: 8\nmin_free:\n  /scratch: 10%\nnodes:\n  node2:\n    expected_gpus: 4\n"
                           "full: {matmul_seconds: 0.5}\n")
    assert load_config(path, node="node1").expected_gpus == 8
    node2 = load_config(path, node="node2")
    assert node2.expected_gpus == 4 and node2.min_free == {"/scratch": Amount(percent=10)}
    assert node2.full.matmul_seconds == 0.5 and node2.full.matmul_size == 2048


@pytest.mark.parametrize("text,line,key", [
    ("expected_gpus: 8\nexpected_gpu: 4\n", 2, "expected_gpu"),
    ("min_free:\n  /scratch: lots\n", 2, "min_free./scratch"),
    ("nvml: maybe\n", 1, "nvml"),
    ("full:\n  matmul_seconds: fast\n", 2, "full.matmul_seconds"),
    ("nodes:\n  node2:\n    expected_gpus: -1\n", 3, "nodes.node2.expected_gpus"),
    ("expected_gpus: 8\nexpected_gpus: 4\n", 2, "expected_gpus"),
])
def test_setting_errors_name_file_line_and_key(tmp_path, text, line, key):
    path = write(tmp_path, text)
    with pytest.raises(DataFileError) as caught:
        load_config(path, node="node1")
    assert (caught.value.file, caught.value.line, caught.value.key) == (str(path), line, key)
    assert str(caught.value).startswith(f"{path}:{line}: {key}: ")


def test_yaml_syntax_errors_name_the_line(tmp_path):
    path = write(tmp_path, "expected_gpus: 8\nmin_free: [unclosed\n")
    with pytest.raises(DataFileError) as caught:
        load_config(path)
    assert caught.value.line is not None and caught.value.file == str(path)


def test_no_settings_file_means_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("PITSTOP_HOOKS_CONFIG", raising=False)
    monkeypatch.setattr("pitstop.hooks.config.DEFAULT_CONFIG", tmp_path / "absent.yaml")
    assert load_config().expected_gpus is None


def test_shipped_thresholds_load_and_have_the_models():
    table = load_thresholds(Path(__file__).parents[2] / "hooks" / "thresholds.yaml")
    assert {"cpu", "default", "NVIDIA H100 80GB HBM3", "NVIDIA H200"} <= set(table)
    assert for_model(table, "Some Future GPU").model == "default"
    assert table["NVIDIA H200"].limits["memory_bandwidth_gbs"].fail_below > \
        table["cpu"].limits["memory_bandwidth_gbs"].fail_below


def test_limit_judges_fail_warn_pass():
    limit = Limit(10, 20)
    assert [limit.judge(v) for v in (5, 15, 25)] == ["fail", "warn", "pass"]
    assert Limit(10).judge(10) == "pass"


ROW = "  matmul_gflops: {fail_below: 1}\n  memory_bandwidth_gbs: {fail_below: 1}\n" \
      "  allreduce_busbw_gbs: {fail_below: 1}\n  sdc_tolerance: 1.0e-3\n"


@pytest.mark.parametrize("text,line,key", [
    ("default:\n" + ROW + "cpu:\n  matmul_gflop: {fail_below: 1}\n", 7, "cpu.matmul_gflop"),
    ("default:\n" + ROW.replace("{fail_below: 1}\n  memory", "{fail_below: x}\n  memory"), 2,
     "default.matmul_gflops.fail_below"),
    ("default:\n" + ROW.replace("1.0e-3", "2"), 5, "default.sdc_tolerance"),
    ("default:\n" + ROW.replace("{fail_below: 1}\n  memory", "{fail_below: 5, warn_below: 1}\n  memory"), 2,
     "default.matmul_gflops.warn_below"),
    ("cpu:\n" + ROW, None, "default"),
])
def test_threshold_errors_name_file_line_and_key(text, line, key):
    with pytest.raises(DataFileError) as caught:
        parse_thresholds(load_text(text, "t.yaml"), "t.yaml")
    assert (caught.value.file, caught.value.line, caught.value.key) == ("t.yaml", line, key)
