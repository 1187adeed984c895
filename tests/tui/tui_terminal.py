"""A real terminal for tests: one tmux server of our own, keys in, the screen read back
with capture-pane, every wait on what the screen shows (the TUI's and the demo's tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pitstop.waiting import wait_until

PITSTOP = str(Path(sys.executable).parent / "pitstop")

# Runs a command as its child on the same terminal and writes how it ended, "STATUS/" or
# "/SIGNAL" (tmux's pane_dead_status/pane_dead_signal), to a file renamed into place. tmux
# 3.3 can miss its pane's exit: the process stayed a zombie for a minute and more, the
# pane dead with no status (once in CI, once in five runs here).
EXIT_RECORDER = """
import os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):  # the terminal's keys are the child's
    signal.signal(number, signal.SIG_IGN)
code = child.wait()
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(f"{code}/" if code >= 0 else f"/{-code}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
sys.exit(code if code >= 0 else 128 - code)
"""


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

    def start(self, env: dict[str, str], *command: str, exit_file: Path | None = None) -> None:
        """Run `command` in the window; with `exit_file`, how it ended is written there."""
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        if exit_file is not None:
            command = (sys.executable, "-c", EXIT_RECORDER, str(exit_file), *command)
        self.tmux("new-session", "-d", "-s", "tui", "-x", "160", "-y", "45", *env_args, *command)

    def ended(self, exit_file: Path, timeout: float = 60.0) -> str:
        """How the command started with `exit_file` ended: "STATUS/" or "/SIGNAL"."""
        return wait_until(lambda: exit_file.exists() and exit_file.read_text(), timeout,
                          what="the command to end")

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
