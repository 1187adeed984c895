"""`pitstop agent policy show | check`."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from pitstop.cli import cli
from pitstop.daemon.cli import agent


def run(*args):
    return CliRunner().invoke(cli, ["agent", *args])


def test_policy_show_prints_the_merged_policy_as_yaml():
    result = run("policy", "show")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["rules"]["xid"]["codes"]["79"]["class"] == "reboot"
    assert shown["settings"]["correlation"]["fence"] == "drain"


def test_policy_show_with_an_override(tmp_path):
    override = tmp_path / "site.yaml"
    override.write_text('rules:\n  xid:\n    codes:\n      "13": drain\n')
    result = run("policy", "show", "--file", str(override))
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["rules"]["xid"]["codes"]["13"] == "drain"
    assert shown["rules"]["xid"]["codes"]["79"]["class"] == "reboot"
    assert str(override) in result.output.splitlines()[0]


def test_policy_check_accepts_a_good_file(tmp_path):
    override = tmp_path / "site.yaml"
    override.write_text("settings:\n  breaker_max_share: 0.5\n")
    result = run("policy", "check", str(override))
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_policy_check_names_the_line_of_a_bad_file(tmp_path):
    override = tmp_path / "site.yaml"
    override.write_text("rules:\n  io_error:\n    class: watch\n    window_s: soon\n")
    result = CliRunner().invoke(agent, ["policy", "check", str(override)])
    assert result.exit_code == 2
    assert f"{override}:4: rules.io_error.window_s: expected a number" in result.output


def test_policy_check_on_a_missing_file(tmp_path):
    result = run("policy", "check", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2 and "absent.yaml" in result.output


def test_the_shipped_policy_checks_clean():
    from pitstop.daemon.policy import DEFAULT_POLICY
    assert run("policy", "check", str(DEFAULT_POLICY)).exit_code == 0


def test_the_agent_group_holds_policy():
    assert {"show", "check"} <= set(agent.commands["policy"].commands)


def test_what_show_prints_checks_clean_and_means_the_same(tmp_path):
    from pitstop.daemon.policy import Policy
    shown = tmp_path / "shown.yaml"
    shown.write_text(run("policy", "show").output)
    assert run("policy", "check", str(shown)).exit_code == 0
    assert Policy.load(shown).to_yaml() == Policy.load().to_yaml()
    assert Policy.load(default=shown).to_yaml() == Policy.load().to_yaml()
