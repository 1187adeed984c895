"""`pitstop hooks install | uninstall | node-setup` into a temporary prefix."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from click.testing import CliRunner

from pitstop.hooks.cli import hooks
from pitstop.hooks.install import conf_values, edit_conf, revert_conf

GOLDEN = Path(__file__).parent / "golden"
PYTHON = "/opt/pitstop/bin/python"
SLURM_CONF = """\
ClusterName=prod
SlurmctldHost=head
SchedulerParameters=bf_continue,bf_window=4320
Prolog=/etc/slurm/old-prolog.sh   # the site's own
RebootProgram=/usr/local/sbin/site-reboot
NodeName=gpu[001-016] Gres=gpu:8 CPUs=96
PartitionName=gpu Nodes=gpu[001-016] Default=YES
"""


def make_prefix(root: Path) -> Path:
    conf = root / "etc" / "slurm" / "slurm.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(SLURM_CONF)
    (root / "etc" / "pitstop").mkdir()
    (root / "etc" / "pitstop" / "agent.yaml").write_text("port: 9999  # the operator's own\n")
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            content = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
            out[str(path.relative_to(root))] = (stat.S_IMODE(info.st_mode), stat.S_IFMT(info.st_mode), content)
    return out


def run(*args):
    return CliRunner().invoke(hooks, list(args), catch_exceptions=False)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PITSTOP_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs: rerun with PITSTOP_UPDATE_GOLDEN=1 if intended"


def test_dry_run_is_golden_and_writes_nothing(tmp_path):
    root = make_prefix(tmp_path / "root")
    before = snapshot(root)
    result = run("install", "--prefix", str(root), "--python", PYTHON, "--dry-run")
    assert result.exit_code == 0, result.output
    assert snapshot(root) == before
    check_golden("install-dry-run.txt", result.output.replace(str(root), "<PREFIX>"))


def test_install_then_uninstall_leaves_the_prefix_as_it_was(tmp_path):
    root = make_prefix(tmp_path / "root")
    before = snapshot(root)
    result = run("install", "--prefix", str(root), "--python", PYTHON)
    assert result.exit_code == 0, result.output
    unit = (root / "etc/systemd/system/pitstop-agent.service").read_text()
    for line in ("Type=notify", "WatchdogSec=60", "Restart=always",
                 f"ExecStart={PYTHON} -m pitstop agent run --config /etc/pitstop/agent.yaml"):
        assert line in unit
    assert (root / "etc/pitstop/agent.yaml").read_text() == "port: 9999  # the operator's own\n"
    assert "agent_port" in (root / "etc/pitstop/hooks.yaml").read_text()
    prolog = root / "usr/local/libexec/pitstop/prolog"
    assert os.access(prolog, os.X_OK) and f"exec {PYTHON} -m pitstop hooks prolog" in prolog.read_text()
    conf = (root / "etc/slurm/slurm.conf").read_text()
    values = conf_values(conf)
    assert values["prolog"] == "/usr/local/libexec/pitstop/prolog"
    assert values["epilog"] == "/usr/local/libexec/pitstop/epilog"
    assert values["healthcheckprogram"] == "/usr/local/libexec/pitstop/healthcheck"
    assert values["healthcheckinterval"] == "300"
    assert values["schedulerparameters"] == "bf_continue,bf_window=4320,nohold_on_prolog_fail,permit_job_expansion"
    assert values["rebootprogram"] == "/usr/local/sbin/site-reboot"  # the site's own is kept
    assert (root / "etc/slurm/slurm.conf.pitstop-backup").read_text() == SLURM_CONF
    again = CliRunner().invoke(hooks, ["install", "--prefix", str(root)])
    assert again.exit_code != 0 and "already installed" in again.output

    result = run("uninstall", "--prefix", str(root))
    assert result.exit_code == 0, result.output
    assert snapshot(root) == before


def test_install_into_an_empty_prefix_prints_the_slurm_lines_and_uninstalls_to_empty(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    result = run("install", "--prefix", str(root), "--python", PYTHON)
    assert result.exit_code == 0 and "no slurm.conf here" in result.output
    assert run("uninstall", "--prefix", str(root)).exit_code == 0
    assert snapshot(root) == {}


def test_conf_edit_is_reversible_for_lines_with_and_without_newline():
    for text in (SLURM_CONF, SLURM_CONF.rstrip("\n"), ""):
        edited = edit_conf(text, {"Prolog": "/x", "HealthCheckInterval": "300"})
        assert "#pitstop-replaced# Prolog=/etc/slurm/old-prolog.sh" in edited or not text
        assert revert_conf(edited) == (text if text.endswith("\n") or not text else text + "\n")


def test_node_setup_dry_run_names_the_systemctl_steps(tmp_path):
    root = make_prefix(tmp_path / "root")
    result = run("node-setup", "--prefix", str(root), "--python", PYTHON, "--dry-run")
    assert result.exit_code == 0
    assert "not this machine's root: systemd left alone" in result.output
    from pitstop.hooks.install import enable_commands
    assert enable_commands(Path("/")) == [["systemctl", "daemon-reload"],
                                          ["systemctl", "enable", "--now", "pitstop-agent.service"]]


def test_the_default_agent_config_is_one_the_agent_accepts(tmp_path):
    from pitstop.daemon.config import load_config as load_agent_config
    from pitstop.hooks.config import load_config as load_hooks_config
    from pitstop.hooks.install import DEFAULT_AGENT_CONFIG, DEFAULT_HOOKS_CONFIG
    (tmp_path / "agent.yaml").write_text(DEFAULT_AGENT_CONFIG)
    (tmp_path / "hooks.yaml").write_text(DEFAULT_HOOKS_CONFIG)
    agent = load_agent_config(tmp_path / "agent.yaml", {})
    assert load_hooks_config(tmp_path / "hooks.yaml").agent_port == agent.port
