"""Where a `ClusterView` comes from: this machine, or a login node over SSH.

The app holds one `Provider` and never knows which. `LocalProvider` reads Slurm (two
calls per refresh, through `pitstop.slurm`), the agents' state directory and the run
directories; `LocalStreamProvider`, what `pitstop tui` uses on the login node, has a
child process do those reads; `SshProvider` runs the same code on the login node (`python -m
pitstop.tui.remote …`: one process for the session that answers each refresh with the
rows that changed, one command for each action) and reads job output over SFTP. Every
failure is a `ProviderError` whose text is fit for the screen.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitstop.health_view import cluster_health, events, load_states
from pitstop.tui import wire
from pitstop.tui.data import ClusterView, join_runs
from pitstop.tui.devices import devices_of, node_state

DEFAULT_STATE_DIR = "/var/lib/pitstop"
OUTPUT_CHUNK = 1024 * 1024  # the most of a job's output read per poll


class ProviderError(Exception):
    """Something the screen should say: a Slurm refusal, a lost connection, a bad recipe."""


@dataclass
class LaunchPreview:
    """What a launch would submit, shown before anything is written."""

    recipe: str
    overrides: list[str]
    run_dir: str
    script_text: str
    config_text: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Launched:
    job_id: str
    run_dir: str


def default_state_dir() -> str:
    return os.environ.get("PITSTOP_STATE_DIR", DEFAULT_STATE_DIR)


def operator_reason(action: str) -> str:
    """A drain reason that names the person; deliberately not `pitstop:`, so the agent
    never resumes a node that a person drained."""
    return f"{action} from pitstop tui by {getpass.getuser()}"


class Provider:
    """The one interface the app uses; see LocalProvider and SshProvider."""

    label = "provider"

    def fetch(self) -> ClusterView:
        raise NotImplementedError

    def drain(self, node: str, reason: str) -> None:
        raise NotImplementedError

    def resume(self, node: str) -> None:
        raise NotImplementedError

    def requeue(self, job_id: str) -> None:
        raise NotImplementedError

    def cancel(self, job_id: str) -> None:
        raise NotImplementedError

    def recipes(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def preview(self, recipe: str, overrides: list[str]) -> LaunchPreview:
        raise NotImplementedError

    def launch(self, recipe: str, overrides: list[str]) -> Launched:
        raise NotImplementedError

    def read_output(self, path: str, offset: int) -> tuple[str, int]:
        """Text of the file `path` from byte `offset`, and the offset to read from next."""
        raise NotImplementedError

    def devices(self, node: str) -> list[dict[str, Any]] | None:
        """The node's accelerators as its agent last read them (`telemetry["devices"]` of
        its state file); None when the agent publishes none. Asked for one node when its
        detail opens, so the whole-cluster refresh stays small."""
        raise NotImplementedError

    def plans(self, width: int) -> list[dict[str, Any]]:
        """Every training plan's picture (`pitstop.plans.picture`): node-by-time lines of
        `width` columns, its state and countdown. Asked for while the Plans view is open."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalProvider(Provider):
    """Slurm, the state directory and the run directories of this machine."""

    def __init__(self, slurm=None, state_dir: str | Path | None = None,
                 launch_dir: str | Path | None = None, torchrun: str | Path | None = None) -> None:
        from pitstop.slurm import Slurm

        self.slurm = slurm or Slurm()
        self.state_dir = Path(state_dir or default_state_dir())
        self.launch_dir = Path(launch_dir or Path.cwd()).absolute()
        self.torchrun = Path(torchrun) if torchrun else None
        self.label = f"local · {socket.gethostname()}"

    def fetch(self) -> ClusterView:
        from pitstop.slurm import SlurmError

        try:
            snapshot = self.slurm.snapshot()
        except SlurmError as exc:
            raise ProviderError(f"Slurm: {exc}") from None
        nodes = cluster_health(snapshot, load_states(self.state_dir), snapshot.taken_at)
        jobs, checkpoints = join_runs(snapshot.jobs)
        return ClusterView(taken_at=snapshot.taken_at, nodes=nodes, jobs=jobs,
                           checkpoints=checkpoints, events=events(self.state_dir),
                           source=self.label)

    def _slurm_action(self, method: str, *args: str) -> None:
        from pitstop.slurm import SlurmError

        try:
            getattr(self.slurm, method)(*args)
        except (SlurmError, ValueError) as exc:
            raise ProviderError(f"{method} {' '.join(args[:1])}: {exc}") from None

    def drain(self, node: str, reason: str) -> None:
        self._slurm_action("drain", node, reason)

    def resume(self, node: str) -> None:
        self._slurm_action("resume", node)

    def requeue(self, job_id: str) -> None:
        self._slurm_action("requeue", job_id)

    def cancel(self, job_id: str) -> None:
        self._slurm_action("cancel", job_id)

    def recipes(self) -> list[dict[str, Any]]:
        from pitstop.recipes.compose import list_recipes

        return [info.to_json() for info in list_recipes()]

    def _compose(self, recipe: str, overrides: list[str]) -> dict[str, Any]:
        from pitstop.recipes.compose import compose
        from pitstop.recipes.errors import RecipeError

        try:
            return compose(recipe, list(overrides))
        except RecipeError as exc:
            raise ProviderError(str(exc)) from None

    def preview(self, recipe: str, overrides: list[str]) -> LaunchPreview:
        from pitstop.recipes.errors import RecipeError
        from pitstop.recipes.launch import launch

        cfg = self._compose(recipe, overrides)
        try:
            result, prepared = launch(cfg, dry_run=True, chdir=self.launch_dir, torchrun=self.torchrun)
        except RecipeError as exc:
            raise ProviderError(str(exc)) from None
        return LaunchPreview(recipe=recipe, overrides=list(overrides), run_dir=str(result.run_dir),
                             script_text=prepared.script_text, config_text=prepared.config_text,
                             warnings=list(result.warnings))

    def launch(self, recipe: str, overrides: list[str]) -> Launched:
        from pitstop.recipes.errors import RecipeError
        from pitstop.recipes.launch import SubmitError, launch
        from pitstop.slurm import SlurmError

        cfg = self._compose(recipe, overrides)

        def submit(script: Path, cwd: Path) -> str:
            return self.slurm.submit(script, cwd=cwd)

        try:
            result, _ = launch(cfg, chdir=self.launch_dir, torchrun=self.torchrun, submit=submit)
        except (RecipeError, SubmitError, SlurmError) as exc:
            raise ProviderError(f"launch {recipe}: {exc}") from None
        return Launched(job_id=str(result.job_id), run_dir=str(result.run_dir))

    def devices(self, node: str) -> list[dict[str, Any]] | None:
        return devices_of(node_state(self.state_dir, node))

    def plans(self, width: int) -> list[dict[str, Any]]:
        from pitstop.plans.picture import from_cluster
        from pitstop.plans.store import PlanError, PlanStore
        from pitstop.slurm import SlurmError

        try:
            return from_cluster(self.slurm, PlanStore(self.state_dir), width=width)
        except (PlanError, SlurmError) as exc:
            raise ProviderError(f"plans: {exc}") from None

    def read_output(self, path: str, offset: int) -> tuple[str, int]:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(OUTPUT_CHUNK)
        except FileNotFoundError:
            return "", offset
        except OSError as exc:
            raise ProviderError(f"cannot read {path}: {exc}") from None
        return data.decode("utf-8", "replace"), offset + len(data)


def _decoded(decoder: wire.Decoder, answer: str, where: str, restart) -> ClusterView:
    """The view in a far side's answer; its error, or an answer this side cannot read
    (then `restart()` the stream, which is out of step), as a ProviderError."""
    try:
        return decoder.decode(answer)
    except wire.RemoteError as exc:
        raise ProviderError(str(exc)) from None
    except (ValueError, KeyError, TypeError) as exc:
        restart()
        raise ProviderError(f"unreadable view from {where}: {exc}") from None


class LocalStreamProvider(LocalProvider):
    """This machine, with each refresh built by a child process (`remote watch`, as over
    SSH). On a big cluster a refresh reads thousands of state files: in the child that
    is the child's CPU and its own interpreter lock, so the screen never waits on it, and
    the child answers with only the rows that changed. Actions, launches and output are
    the LocalProvider's own."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._child: subprocess.Popen | None = None
        self._errors = None  # the child's stderr
        self._decoder = wire.Decoder()
        self._fetching = threading.Lock()

    def _start(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            command = [sys.executable, "-m", "pitstop.tui.remote", "--state-dir", str(self.state_dir), "watch"]
            self._errors = tempfile.TemporaryFile(mode="w+")  # a file, so a chatty child never blocks
            self._child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=self._errors, text=True, env=self.slurm.env)
            self._decoder = wire.Decoder()  # the child starts afresh: so does this side
        return self._child

    def fetch(self) -> ClusterView:
        with self._fetching:
            child = self._start()
            try:
                answer = wire.ask(child.stdin, child.stdout)
            except OSError as exc:  # the child went away mid-request
                answer, why = None, str(exc)
            else:
                why = ""
            if answer is None:
                self.close()
                self._errors.seek(0)
                err = (self._errors.read() or why).strip().splitlines()
                raise ProviderError((err[-1].removeprefix("error: ") if err else "the view process ended")
                                    + "; it restarts with the next refresh")
            view = _decoded(self._decoder, answer, "the view process", self.close)
        view.source = self.label
        return view

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            child.stdin.close()  # the child ends when its stdin does
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@dataclass
class SshTarget:
    """Where to connect, after `user@host[:port]` and the ssh config are read."""

    host: str
    user: str
    port: int = 22
    key_files: list[str] = field(default_factory=list)
    known_hosts: str = ""

    @property
    def display(self) -> str:
        return f"{self.user}@{self.host}" + (f":{self.port}" if self.port != 22 else "")


def ssh_target(spec: str, port: int | None = None, key_file: str | None = None,
               known_hosts: str | None = None, ssh_config: str | None = None) -> SshTarget:
    """`user@host`, `host`, `user@host:port` or an alias of the ssh config, resolved the way
    OpenSSH does: explicit options first, then the config's HostName, Port, User,
    IdentityFile and UserKnownHostsFile."""
    import paramiko

    user, _, host = spec.rpartition("@")
    if ":" in host and host.count(":") == 1:
        host, _, port_text = host.partition(":")
        port = port or int(port_text)
    config_path = Path(ssh_config).expanduser() if ssh_config else Path("~/.ssh/config").expanduser()
    found: dict[str, Any] = {}
    if config_path.is_file():
        found = paramiko.SSHConfig.from_path(str(config_path)).lookup(host)
    known = known_hosts or (found.get("userknownhostsfile", "").split() or ["~/.ssh/known_hosts"])[0]
    keys = [key_file] if key_file else list(found.get("identityfile", []))
    return SshTarget(host=found.get("hostname", host), user=user or found.get("user") or getpass.getuser(),
                     port=int(port or found.get("port", 22)), key_files=[str(Path(k).expanduser()) for k in keys],
                     known_hosts=str(Path(known).expanduser()))


class SshProvider(Provider):
    """The login node over SSH: host keys checked against known_hosts (never added),
    a key file or the agent, and a reconnect with backoff after a dropped connection."""

    MAX_BACKOFF_S = 30.0

    def __init__(self, target: SshTarget, state_dir: str | None = None,
                 remote_python: str | None = None, timeout: float = 20.0) -> None:
        self.target = target
        self.state_dir = state_dir
        self.remote_python = remote_python
        self.timeout = timeout
        self.label = f"ssh · {target.display}"
        self._client = None
        self._sftp = None
        self._lock = threading.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error = ""
        self._decoder = wire.Decoder()
        self._stream = None  # (stdin, stdout, stderr) of `remote watch`
        self._fetching = threading.Lock()
        self._one_shot = False  # the far side has no `watch`: one command a refresh
        self.connects = 0  # successful connections, for tests

    # --- connection -------------------------------------------------------------------

    def _connect(self):
        import paramiko

        client = paramiko.SSHClient()
        known = Path(self.target.known_hosts)
        if known.is_file():
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        where = f"{self.target.host}:{self.target.port}"
        try:
            client.connect(self.target.host, port=self.target.port, username=self.target.user,
                           key_filename=self.target.key_files or None, allow_agent=True,
                           look_for_keys=not self.target.key_files, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout)
        except paramiko.BadHostKeyException:
            client.close()
            raise ProviderError(f"the host key of {where} does not match {known}: refusing to connect "
                                "(the host was reinstalled, or someone is in the middle)") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise ProviderError(f"{self.target.display}: authentication failed ({exc}); "
                                "load a key into ssh-agent or pass --identity-file") from None
        except paramiko.SSHException as exc:
            client.close()
            if "known_hosts" in str(exc):
                raise ProviderError(f"unknown host key for {where}: it is not in {known}, so pitstop "
                                    "refuses to connect; verify the host's fingerprint and add it "
                                    "(ssh once, or ssh-keyscan)") from None
            raise ProviderError(f"ssh {where}: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            raise ProviderError(f"cannot reach {where}: {exc}") from None
        self.connects += 1
        return client

    def _ensure(self):
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return self._client
                self._drop("the connection closed")
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise ProviderError(f"{self._last_error}; reconnecting in {wait:.0f}s")
            try:
                self._client = self._connect()
            except ProviderError as exc:
                self._schedule_retry(str(exc))
                raise ProviderError(f"{exc}; retrying in {self._backoff:.0f}s") from None
            self._backoff = 0.0
            return self._client

    def _schedule_retry(self, error: str) -> None:
        self._last_error = error
        self._backoff = min(self.MAX_BACKOFF_S, max(1.0, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff

    def _drop(self, why: str) -> None:
        """Forget the connection; the next call reconnects (after the backoff)."""
        client, self._client, self._sftp, self._stream = self._client, None, None, None
        if client is not None:
            client.close()
        self._last_error = f"connection to {self.target.display} lost: {why}"
        self._backoff = min(self.MAX_BACKOFF_S, max(1.0, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff

    def _lost(self, exc: BaseException) -> ProviderError:
        with self._lock:
            self._drop(str(exc) or type(exc).__name__)
        return ProviderError(f"{self._last_error}; reconnecting in {self._backoff:.0f}s")

    def close(self) -> None:
        with self._lock:
            client, self._client, self._sftp, self._stream = self._client, None, None, None
        if client is not None:
            client.close()

    # --- commands ---------------------------------------------------------------------

    def run_remote(self, args: list[str]) -> str:
        """Run one pitstop command on the far side; its stdout, or its stderr as the error."""
        import paramiko

        client = self._ensure()
        command = shlex.join(args)
        try:
            _, stdout, stderr = client.exec_command(command, timeout=self.timeout)
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            status = stdout.channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(exc) from None
        if status != 0:
            lines = [line.removeprefix("error: ") for line in err.strip().splitlines()]
            if status == 127 or (args[:2] == ["command", "-v"] and not lines):
                lines = [f"{args[-1]} not found on {self.target.host}: is pitstop installed there?"]
            raise ProviderError("\n".join(lines) or f"{args[0]} exited {status}")
        return out

    def _python(self) -> str:
        """The Python that runs the far side's `pitstop`: its script's `#!` line, so a
        login shell that puts another Python first on PATH does not matter."""
        if self.remote_python is None:
            script = self.run_remote(["command", "-v", "pitstop"]).strip()
            if not script:
                raise ProviderError(f"no pitstop on {self.target.host}'s PATH: install it there")
            first_line = self.run_remote(["head", "-n1", script]).strip()
            self.remote_python = (first_line[2:].strip() if first_line.startswith("#!")
                                  else "python3")
        return self.remote_python

    def _command(self, *args: str) -> list[str]:
        command = [self._python(), "-m", "pitstop.tui.remote"]
        if self.state_dir:
            command += ["--state-dir", str(self.state_dir)]
        return command + list(args)

    def _run_pitstop(self, *args: str) -> str:
        return self.run_remote(self._command(*args))

    def _remote(self, *args: str) -> Any:
        out = self._run_pitstop(*args)
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise ProviderError(f"unreadable answer from {self.target.host}: {out[:200]!r}") from None

    def fetch(self) -> ClusterView:
        """One refresh: an answer on the `remote watch` stream (started on the first
        refresh, again after a lost one), or, where the far side's pitstop has no
        `watch`, one `remote view` command."""
        with self._fetching:  # a refresh started while one runs waits: one stream, one decoder
            out = self._run_pitstop("view") if self._one_shot else self._watch_answer()
            view = _decoded(self._decoder, out, self.target.host, self._close_stream)
        view.source = self.label
        return view

    def _watch_answer(self) -> str:
        import paramiko

        client = self._ensure()
        try:
            if self._stream is None:
                self._stream = client.exec_command(shlex.join(self._command("watch")), timeout=self.timeout)
                self._decoder = wire.Decoder()  # the far side starts afresh: so does this side
            stdin, stdout, stderr = self._stream
            answer = wire.ask(stdin, stdout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(exc) from None
        if answer is not None:
            return answer
        # The far side ended the stream: say why, and use one command a refresh if it
        # is an older pitstop without `watch`.
        err = stderr.read().decode("utf-8", "replace").strip()
        self._close_stream()
        if "No such command" in err:
            self._one_shot = True
            return self._run_pitstop("view")
        raise ProviderError(err.removeprefix("error: ") or f"the view stream from {self.target.host} ended")

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream[0].channel.close()

    def drain(self, node: str, reason: str) -> None:
        self._remote("drain", node, "--reason", reason)

    def resume(self, node: str) -> None:
        self._remote("resume", node)

    def requeue(self, job_id: str) -> None:
        self._remote("requeue", job_id)

    def cancel(self, job_id: str) -> None:
        self._remote("cancel", job_id)

    def recipes(self) -> list[dict[str, Any]]:
        return self._remote("recipes")

    def devices(self, node: str) -> list[dict[str, Any]] | None:
        return self._remote("devices", node)

    def plans(self, width: int) -> list[dict[str, Any]]:
        return self._remote("plans", "--width", str(width))

    def preview(self, recipe: str, overrides: list[str]) -> LaunchPreview:
        return LaunchPreview(**self._remote("preview", recipe, "--", *overrides))

    def launch(self, recipe: str, overrides: list[str]) -> Launched:
        return Launched(**self._remote("launch", recipe, "--", *overrides))

    def read_output(self, path: str, offset: int) -> tuple[str, int]:
        import paramiko

        client = self._ensure()
        try:
            if self._sftp is None:
                self._sftp = client.open_sftp()
            try:
                with self._sftp.open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(OUTPUT_CHUNK)
            except FileNotFoundError:
                return "", offset
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(exc) from None
        return data.decode("utf-8", "replace"), offset + len(data)
