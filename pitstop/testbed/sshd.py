"""An sshd on 127.0.0.1 for the testbed, so SSH paths are tested against a real server.

Host and user keys are generated under the testbed directory; `known_hosts` and an ssh
config are written beside them, so a client checks the host key instead of trusting it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pitstop.testbed.config import Layout, free_port_block
from pitstop.testbed.procs import alive, ensure_packages, run_daemon, stop, wait

SSHD = "/usr/sbin/sshd"
HOST_ALIAS = "pitstop-testbed"


def ssh_paths(layout: Layout) -> dict[str, Path]:
    d = layout.ssh_dir
    return {"config": d / "sshd_config", "host_key": d / "host_ed25519",
            "user_key": d / "id_ed25519", "authorized_keys": d / "authorized_keys",
            "known_hosts": d / "known_hosts", "client_config": d / "ssh_config",
            "pid": d / "sshd.pid", "log": d / "sshd.log"}


def _keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)


def start_sshd(layout: Layout) -> int:
    """Start (or keep) the testbed's sshd; returns its port."""
    ensure_packages(["openssh-server", "openssh-client"], [SSHD, "/usr/bin/ssh-keygen"])
    paths = ssh_paths(layout)
    if layout.ssh_port and alive(paths["pid"], "sshd"):
        return layout.ssh_port
    layout.ssh_dir.mkdir(parents=True, exist_ok=True)
    layout.ssh_dir.chmod(0o700)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    _keygen(paths["host_key"], "pitstop-testbed-host")
    _keygen(paths["user_key"], "pitstop-testbed-user")
    shutil.copyfile(paths["user_key"].with_suffix(".pub"), paths["authorized_keys"])
    paths["authorized_keys"].chmod(0o600)
    port = layout.ssh_port or free_port_block(1)
    venv_bin = str(Path(sys.executable).parent)
    env_path = f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    paths["config"].write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {paths['host_key']}",
        f"PidFile {paths['pid']}",
        f"AuthorizedKeysFile {paths['authorized_keys']}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "X11Forwarding no",
        "Subsystem sftp internal-sftp",
        # Sessions see the testbed's Slurm and this venv's pitstop, as on a login node.
        f"SetEnv SLURM_CONF={layout.slurm_conf} PATH={env_path}",
        "",
    ]))
    run_daemon([SSHD, "-f", str(paths["config"]), "-E", str(paths["log"])], "sshd")
    wait(lambda: alive(paths["pid"], "sshd"), 10, "sshd to start", paths["log"])
    host_pub = paths["host_key"].with_suffix(".pub").read_text().split()
    paths["known_hosts"].write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    paths["client_config"].write_text("\n".join([
        f"Host {HOST_ALIAS}",
        "  HostName 127.0.0.1",
        f"  Port {port}",
        "  User root",
        f"  IdentityFile {paths['user_key']}",
        f"  UserKnownHostsFile {paths['known_hosts']}",
        "  StrictHostKeyChecking yes",
        "  IdentitiesOnly yes",
        "",
    ]))
    layout.ssh_port = port
    layout.save()
    return port


def sshd_pid(layout: Layout) -> int:
    return alive(ssh_paths(layout)["pid"], "sshd")


def stop_sshd(layout: Layout) -> list[str]:
    if not layout.ssh_dir.exists():
        return []
    return stop(ssh_paths(layout)["pid"], "sshd", 10)
