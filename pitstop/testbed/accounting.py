"""The testbed's accounting: slurmdbd on a private MariaDB, as production clusters run.

Without an accounting database Slurm resizes a running job once: the resize asks the
database for the job's new record, and with `accounting_storage/none` nobody answers, so
every later `scontrol update` of that job waits five seconds and fails ("the DB index is
being set"). pitstop gives a fenced node back and grows a job onto a free one (a spare
replaced), which is a resize each; so the testbed runs slurmdbd as a real cluster does.
The database listens on loopback only, with a password of its own, in a directory only
root can enter.
"""

from __future__ import annotations

import secrets
import subprocess
from pitstop.fsutil import write_atomic
from pitstop.testbed import procs
from pitstop.testbed.config import Layout

PACKAGES = ["mariadb-server", "slurmdbd"]
BINARIES = {"mariadbd": "/usr/sbin/mariadbd", "mariadb-install-db": "/usr/bin/mariadb-install-db",
            "slurmdbd": "/usr/sbin/slurmdbd"}
DB_USER = "slurm"
DB_NAME = "slurm_acct_db"


def render_slurmdbd_conf(layout: Layout, password: str) -> str:
    return "\n".join([
        "# Written by `pitstop testbed up`.",
        "AuthType=auth/munge",
        f"AuthInfo=socket={layout.munge_socket}",
        "DbdHost=localhost",
        "DbdAddr=127.0.0.1",
        f"DbdPort={layout.dbd_port}",
        "SlurmUser=root",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={layout.db_port}",
        f"StorageUser={DB_USER}",
        f"StoragePass={password}",
        f"StorageLoc={DB_NAME}",
        f"PidFile={layout.dbd_pid}",
        f"LogFile={layout.log_dir / 'slurmdbd.log'}",
    ]) + "\n"


def create(layout: Layout) -> None:
    """The database's files and slurmdbd.conf for a new testbed (ports already chosen)."""
    password = secrets.token_hex(16)
    db = layout.db_dir
    db.mkdir(parents=True, exist_ok=True)
    db.chmod(0o700)
    (db / "run").mkdir(exist_ok=True)
    write_atomic(layout.db_init, f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
                                 f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';\n", mode=0o600)
    write_atomic(layout.slurmdbd_conf, render_slurmdbd_conf(layout, password), mode=0o600)
    proc = subprocess.run([BINARIES["mariadb-install-db"], "--user=root", f"--datadir={db / 'data'}",
                           "--auth-root-authentication-method=socket", "--skip-test-db"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise procs.TestbedError(f"mariadb-install-db failed (exit {proc.returncode}): "
                                 f"{(proc.stderr or proc.stdout).strip()[-1500:]}")


def start(layout: Layout) -> None:
    """MariaDB, then slurmdbd (before slurmctld, which registers the cluster with it).
    A testbed created before the testbed had accounting has no ports for them: none."""
    if not layout.dbd_port:
        return
    db = layout.db_dir
    if not procs.alive(layout.db_pid, "mariadbd"):
        subprocess.Popen([BINARIES["mariadbd"], "--user=root", f"--datadir={db / 'data'}",
                          f"--socket={db / 'run' / 'mariadb.sock'}", f"--port={layout.db_port}",
                          "--bind-address=127.0.0.1", f"--pid-file={layout.db_pid}",
                          f"--init-file={layout.db_init}", f"--log-error={layout.log_dir / 'mariadb.log'}",
                          "--innodb-buffer-pool-size=32M", "--skip-name-resolve"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        procs.wait(lambda: procs.alive(layout.db_pid, "mariadbd") and procs.port_open(layout.db_port), 60,
                   "MariaDB to start", layout.log_dir / "mariadb.log")
    if not procs.alive(layout.dbd_pid, "slurmdbd"):
        procs.run_daemon([BINARIES["slurmdbd"]], "slurmdbd", env={"SLURM_CONF": str(layout.slurm_conf)})
        procs.wait(lambda: procs.alive(layout.dbd_pid, "slurmdbd") and procs.port_open(layout.dbd_port), 30,
                   "slurmdbd to start", layout.log_dir / "slurmdbd.log")


def stop(layout: Layout, timeout: float) -> list[str]:
    return procs.stop(layout.dbd_pid, "slurmdbd", timeout) + procs.stop(layout.db_pid, "mariadbd", timeout)


def running(layout: Layout) -> bool:
    return bool(procs.alive(layout.dbd_pid, "slurmdbd") or procs.alive(layout.db_pid, "mariadbd"))
