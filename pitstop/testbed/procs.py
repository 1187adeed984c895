"""Starting and stopping the testbed's daemons by pid file, and installing what they need.

A pid is trusted only while the process behind it runs the expected program, so a stale
pid file can never make `down` kill a stranger.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from pitstop.waiting import wait_until


class TestbedError(RuntimeError):
    pass


def ensure_packages(packages: list[str], binaries: list[str]) -> None:
    """Install the Debian packages when a binary they bring is missing."""
    missing = [b for b in binaries if not (shutil.which(b) or Path(b).exists())]
    if not missing:
        return
    if os.geteuid() != 0:
        raise TestbedError(
            f"{', '.join(missing)} not found and not root: run as root, or install them with "
            f"`sudo apt-get install -y --no-install-recommends {' '.join(packages)}`")
    if not shutil.which("apt-get"):
        raise TestbedError(f"{', '.join(missing)} not found and there is no apt-get: "
                           f"install {' '.join(packages)} with this system's package manager")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise TestbedError(f"`{' '.join(args)}` failed (exit {proc.returncode}):\n"
                               f"{proc.stderr.strip()[-2000:]}\nInstall {' '.join(packages)} "
                               "by hand and run `pitstop testbed up` again.")


def user_ids(name: str) -> tuple[int, int]:
    import pwd
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def run_daemon(args: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Start a daemon that forks into the background itself; fail with its own words."""
    proc = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=30, env={**os.environ, **env} if env else None)
    if proc.returncode != 0:
        raise TestbedError(f"{what} did not start (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-1500:]}")


def port_open(port: int) -> bool:
    """Something listens on this loopback port."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive(pid_file: Path, program: str) -> int:
    """The pid in `pid_file` when that process runs `program`, else 0 (a stale or
    reused pid never matches, so `down` cannot kill a stranger)."""
    pid = _read_pid(pid_file)
    if not pid:
        return 0
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return 0
        cmdline = proc.cmdline()
        names = {proc.name(), *(Path(c).name for c in cmdline[:1])}
        if program in names or any(program in Path(c).name for c in cmdline[:3]):
            return pid
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0
    return 0


def terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or zombie(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait(lambda: not psutil.pid_exists(pid) or zombie(pid), 5, f"process {pid} to die")


def stop(pid_file: Path, program: str, timeout: float) -> list[str]:
    pid = alive(pid_file, program)
    if not pid:
        pid_file.unlink(missing_ok=True)
        return []
    terminate(pid, timeout)
    pid_file.unlink(missing_ok=True)
    return [f"{program}[{pid}]"]


def wait(condition, timeout: float, what: str, log_file: Path | None = None) -> None:
    """Wait for a daemon; on timeout, the error carries the tail of its log."""
    try:
        wait_until(condition, timeout, what=what, interval=0.05)
    except TimeoutError as exc:
        hint = ""
        if log_file and log_file.exists():
            hint = "\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise TestbedError(f"{exc}{hint}") from None
