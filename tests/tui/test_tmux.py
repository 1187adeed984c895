"""`pitstop tui` in a real terminal (tmux), driven as a person drives it: keys in, the
screen read back with capture-pane, every wait on what the screen shows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pitstop.waiting import wait_until

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

PITSTOP = str(Path(sys.executable).parent / "pitstop")


class Terminal:
    """One tmux server of our own (-L), one 160x45 window running one command."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=10, check=True, env=self.client_env()).stdout

    @staticmethod
    def client_env() -> dict[str, str]:
        """Our environment without COLUMNS and LINES (pytest's), which Textual would
        believe over the terminal's real size."""
        return {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES"}}

    def start(self, env: dict[str, str], *command: str) -> None:
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        self.tmux("new-session", "-d", "-s", "tui", "-x", "160", "-y", "45", *env_args, *command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "tui")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "tui", *keys)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        try:
            return wait_until(lambda: (screen := self.screen()) and text in screen and screen, timeout,
                              what=f"{text!r} on screen")
        except TimeoutError:
            raise AssertionError(f"{text!r} never showed; the screen was:\n{self.screen()}") from None

    def wait_gone(self, text: str, timeout: float = 30.0) -> None:
        try:
            wait_until(lambda: text not in self.screen(), timeout, what=f"{text!r} to go")
        except TimeoutError:
            raise AssertionError(f"{text!r} stayed; the screen was:\n{self.screen()}") from None

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", "tui"],
                              capture_output=True, env=self.client_env()).returncode == 0

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       env=self.client_env())


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
