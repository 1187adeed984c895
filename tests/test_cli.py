import subprocess
import sys

import pytest
from click.testing import CliRunner

from pitstop import __version__
from pitstop.cli import COMPONENTS, cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_lists_every_component():
    result = CliRunner().invoke(cli, ["--help"])
    for name in ("testbed", "agent", "status", "recipes", "check", "hooks", "tui", "demo"):
        assert name in result.output


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_every_command_imports_and_has_help(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output


def test_unbuilt_commands_say_so_and_exit_2():
    from pitstop.cli import LazyGroup
    unbuilt = [n for n in COMPONENTS if "not built yet" in (LazyGroup().get_command(None, n).help or "")]
    for name in unbuilt:
        result = CliRunner().invoke(cli, [name, "anything"])
        assert result.exit_code == 2 and "not built yet" in result.output


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "pitstop", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_testbed_inject_help_lists_faults():
    result = CliRunner().invoke(cli, ["testbed", "inject", "--help"])
    for fault in ("xid:<code>[:<gpu>]", "fallen-off-bus", "neuron:<kind>", "mlx5-fatal",
                  "nccl-timeout", "gloo-timeout", "ib-error"):
        assert fault in result.output
