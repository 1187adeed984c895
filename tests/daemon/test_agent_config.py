"""The agent's settings file and flags: every setting checked, errors name file, line, key."""


import pytest

from pitstop.daemon.config import AgentConfig, load_config
from pitstop.yamlfile import DataFileError


def test_file_then_flags(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("node: gpu-001\nport: 9500\ndisk:\n  /ckpt: 10%\nreplace_command: [/usr/local/bin/replace]\n")
    config = load_config(path, {"port": 9600, "dry_run": True})
    assert (config.node, config.port, config.dry_run) == ("gpu-001", 9600, True)
    assert config.disk == {"/ckpt": "10%"} and config.replace_command == ["/usr/local/bin/replace"]


def test_typo_names_line_and_suggests(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("node: a\nmax_fenced_shar: 0.3\n")
    with pytest.raises(DataFileError) as info:
        load_config(path, {})
    assert f"{path}:2" in str(info.value) and "max_fenced_share" in str(info.value)


@pytest.mark.parametrize("text, key", [("port: nine\n", "port"), ("dry_run: 1\n", "dry_run"),
                                       ("max_fenced_share: 1.5\n", "max_fenced_share"),
                                       ("replace_command: [1, 2]\n", "replace_command"),
                                       ("nvml: maybe\n", "nvml")])
def test_wrong_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(DataFileError, match=key):
        load_config(path, {})


def test_missing_default_file_is_fine_but_a_named_one_is_not(tmp_path):
    from pitstop.daemon.config import DEFAULT_CONFIG
    if not DEFAULT_CONFIG.exists():
        assert load_config(DEFAULT_CONFIG, {}) == AgentConfig()
    with pytest.raises(DataFileError, match="nope.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml", {})


def test_the_slurmd_watch_settings(tmp_path):
    assert (AgentConfig().slurmd_pidfile, AgentConfig().slurmd_grace_s) == ("/run/slurmd.pid", 3.0)
    path = tmp_path / "agent.yaml"
    path.write_text("slurmd_pidfile: ''\nslurmd_grace_s: 5\n")
    config = load_config(path, {})
    assert (config.slurmd_pidfile, config.slurmd_grace_s) == ("", 5)
    path.write_text("stall_startup_s: 600\n")
    assert load_config(path, {}).stall_startup_s == 600
    path.write_text("slurmd_grace_s: soon\n")
    with pytest.raises(DataFileError, match="slurmd_grace_s"):
        load_config(path, {})


def test_the_slurmd_and_start_up_flags_reach_their_settings():
    from click.testing import CliRunner

    from pitstop.daemon import cli

    seen = {}
    original = cli.run.callback

    def capture(config_path, **flags):
        seen.update({cli._FLAG_TO_SETTING.get(k, k): v for k, v in flags.items()})

    cli.run.callback = capture
    try:
        result = CliRunner().invoke(cli.agent, ["run", "--slurmd-pidfile", "/tmp/x.pid", "--slurmd-grace", "2",
                                                "--stall-startup", "60"])
    finally:
        cli.run.callback = original
    assert result.exit_code == 0, result.output
    config = load_config(None, {k: seen[k] for k in ("slurmd_pidfile", "slurmd_grace_s", "stall_startup_s")})
    assert (config.slurmd_pidfile, config.slurmd_grace_s, config.stall_startup_s) == ("/tmp/x.pid", 2.0, 60.0)
    assert AgentConfig().stall_startup_s is None  # 4 x the stall floor
