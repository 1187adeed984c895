"""`pitstop tui` in a real terminal (tmux), driven as a person drives it: keys in, the
screen read back with capture-pane, every wait on what the screen shows."""

from __future__ import annotations

import os
import shutil

import pytest
from tui_terminal import PITSTOP, Terminal

from pitstop.waiting import wait_until

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]


def test_pitstop_tui_in_tmux_as_a_person_uses_it(testbed, slurm, tmp_path):
    slurm.drain("node4", "pitstop: xid 79 gpu1 fell off the bus")
    config = tmp_path / "tui.yaml"
    config.write_text("keymap:\n  pitstop.drain: x\ninterval: 0.5\n")
    env = {**testbed.layout.env(), "HOME": str(tmp_path), "TERM": "xterm-256color",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    terminal = Terminal(f"pitstop-tui-test-{os.getpid()}")
    try:
        terminal.start(env, PITSTOP, "tui", "--config", str(config))
        screen = terminal.wait_for("pitstop: xid 79 gpu1 fell off the bus")
        assert "node1" in screen and "Nodes [4]" in screen and "Traceback" not in screen

        terminal.keys(":")
        terminal.wait_for("tab completes")
        terminal.keys("jo", "Tab")
        terminal.wait_for("jobs")
        terminal.keys("Enter")
        terminal.wait_for("Jobs [")

        terminal.keys("?")
        help_screen = terminal.wait_for("pitstop.drain")
        drain_line = next(line for line in help_screen.splitlines() if "pitstop.drain" in line)
        assert " x " in drain_line and "Drain" in drain_line
        terminal.keys("Escape")  # wait before the next key, or esc + key reads as alt+key
        terminal.wait_gone("pitstop.help.close")
        terminal.keys(":", "nodes", "Enter")
        terminal.wait_for("Nodes [4]")

        terminal.keys("x")  # drain, remapped from d by the config file
        terminal.wait_for("Drain node1?")
        terminal.keys("Enter")
        slurm.wait_for(lambda s: s.node("node1").drained, 20, what="node1 drained")
        terminal.wait_for("node1 drained: drained from pitstop tui")

        terminal.keys("/", "node[14]", "Enter")
        filtered = terminal.wait_for("Nodes [2 of 4]")
        assert "node2" not in filtered.split("Nodes [2 of 4]")[1]

        terminal.keys("q")
        wait_until(lambda: not terminal.alive(), 30, what="pitstop tui to exit on q")
    finally:
        terminal.kill()


@pytest.mark.ssh
def test_pitstop_tui_over_ssh_in_tmux_and_an_unknown_host_refused_on_screen(testbed_ssh, slurm, tmp_path):
    from pitstop.testbed.sshd import HOST_ALIAS, ssh_paths

    paths = ssh_paths(testbed_ssh.layout)
    slurm.drain("node3", "pitstop: ecc dbe gpu0")
    env = {"HOME": str(tmp_path), "TERM": "xterm-256color", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    terminal = Terminal(f"pitstop-tui-ssh-{os.getpid()}")
    try:
        terminal.start(env, PITSTOP, "tui", "--ssh", HOST_ALIAS, "--ssh-config", str(paths["client_config"]),
                       "--state-dir", str(testbed_ssh.layout.agent_root), "--readonly")
        screen = terminal.wait_for("pitstop: ecc dbe gpu0", 30)
        assert "ssh · root@127.0.0.1" in screen and "READ-ONLY" in screen and "Nodes [4]" in screen
        terminal.keys("q")
        wait_until(lambda: not terminal.alive(), 30, what="pitstop tui to exit on q")

        empty = tmp_path / "known_hosts"
        empty.write_text("")
        terminal.start(env, PITSTOP, "tui", "--ssh", HOST_ALIAS, "--ssh-config", str(paths["client_config"]),
                       "--known-hosts", str(empty))
        screen = terminal.wait_for("unknown host key", 30)
        assert "refuses to connect" in screen and "Traceback" not in screen
        terminal.keys("q")
        wait_until(lambda: not terminal.alive(), 30, what="pitstop tui to exit on q")
    finally:
        terminal.kill()
