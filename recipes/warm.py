"""Warm starts: one process per node of a job that has torch imported and forks its ranks.

A restart in the allocation spends most of its start-up before training code runs: the
interpreter, `import torch`, `torch.distributed.checkpoint`, and the optimizer's first
use importing `torch._dynamo` (seconds a rank, every restart). With `cluster.warm_start`
the batch script starts `python -m pitstop.recipes.warm serve` on every node of its
allocation, as a step of its own that overlaps the training steps; it imports all that
once and waits on a private Unix socket. The training step then runs the thin client
`python -m pitstop.recipes.warm run MODULE ARGS…` as each rank: it hands the server its
environment, working directory and standard streams, the server forks a child that
becomes the rank (`runpy`, as `python -m MODULE ARGS…` would), and the client forwards
signals to it and exits with its status. To Slurm and the batch script the client is
the rank: killing the step kills the clients, and a server whose client is gone kills
that child's process group at once.

The batch script starts the servers before the step that needs them (the first attempt,
a restart after the allocation was resized) and tells the clients to wait for them
(`PITSTOP_WARM_WAIT`, seconds): a server that is still importing says so by a marker
beside its socket, and its client waits for it rather than importing torch beside it
(on a node where both start at once that is twice the work, and slower than waiting).
Nothing depends on the server being there: a client that finds no server (none started,
or one that died) runs the module itself, cold.

The socket lives in a directory only its user can enter (`$TMPDIR/pitstop-warm-UID`,
mode 0700), named by job and node, and the server checks that a caller is its own user.
The server only imports: it runs no parallel torch op before it forks (OpenMP's thread
pool does not survive a fork). A forked rank takes the client's CPUs (Slurm binds the
task, which is the client) and the thread count a cold rank would get (`take_cpus`).
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import selectors
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Sequence

from pitstop import priority
from pitstop.fsutil import write_atomic

# What a rank of the training runtime imports before its first step, and what its
# optimizer's first step imports lazily.
PRELOAD = (
    "torch", "torch.nn.functional", "torch.distributed", "torch.distributed.checkpoint",
    "torch.distributed.checkpoint.state_dict", "torch.nn.parallel", "numpy",
    "pitstop.recipes.checkpoint", "pitstop.recipes.model",
    "pitstop.recipes.data", "pitstop.recipes.lora", "pitstop.recipes.progress",
    "pitstop.recipes.segment", "pitstop.recipes.runconfig", "pitstop.rundir",
)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)
_MAX_REQUEST = 1 << 20
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
RANK_NAME = "pitstop-rank"


class WarmError(Exception):
    """The warm start cannot be used here; the message says why."""


def socket_path(environ=os.environ) -> Path:
    """This job's server socket on this node, from Slurm's step environment."""
    job = environ.get("SLURM_JOB_ID")
    node = environ.get("SLURMD_NODENAME")
    if not job or not node:
        raise WarmError("SLURM_JOB_ID and SLURMD_NODENAME are not set: not inside a Slurm step")
    base = Path(environ.get("TMPDIR") or "/tmp") / f"pitstop-warm-{os.getuid()}"
    return base / f"{job}-{node}.sock"


def starting_marker(path: Path) -> Path:
    """Beside the socket while its server imports: the server's pid, written before the
    imports and removed once the socket is in place (or the imports failed)."""
    return path.with_name(f"{path.name}.starting")


def wanted_marker(path: Path) -> Path:
    """Left by a client that waits for a deferred server: import now, the rank needs you."""
    return path.with_name(f"{path.name}.wanted")


def private_dir(path: Path) -> Path:
    """The socket's directory: created 0700, and refused unless it is ours and private."""
    directory = path.parent
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise WarmError(f"{directory}: must be a directory owned by uid {os.getuid()} with mode 0700")
    return directory


def preload(modules: Sequence[str] = PRELOAD) -> None:
    """Import what a rank needs, and what its optimizer's first step imports lazily."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    torch.optim.AdamW([param], lr=0.0).step()  # imports torch._dynamo; one element: no thread pool


# A spare's server imports at this niceness, in a thread of its own (Linux gives each
# thread its own): where nodes share a host it yields the CPU to the step's ranks, while
# the server's thread, which forks the ranks, keeps its priority. On a node of its own
# nothing competes, and nothing changes.
DEFERRED_NICENESS = 10


def run_yielding(work, niceness: int = DEFERRED_NICENESS) -> None:
    """`work()` in a thread at `niceness` (at least the caller's), waited for; its
    exception, if any, raised here. The caller's own priority is untouched."""
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        priority.lower(threading.get_native_id(), niceness)
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller)
            failed.append(exc)

    thread = threading.Thread(target=run, name="pitstop-warm-import")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def intra_op_threads(env: dict, cpus: int) -> int:
    """Pure: the intra-op threads torch gives a fresh process: OMP_NUM_THREADS, else
    MKL_NUM_THREADS, else one per CPU it may run on."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        try:
            threads = int(env.get(name) or 0)
        except ValueError:
            continue
        if threads > 0:
            return threads
    return max(1, cpus)


def take_cpus(cpus: Sequence[int], env: dict) -> None:
    """In a forked rank: the CPUs and threads a cold rank would have. A fork keeps the
    server's (its step's CPU binding, and the thread count torch fixed when the server
    imported it), whereas Slurm binds the task, i.e. the client, and the job's
    OMP_NUM_THREADS is in the client's environment: unmatched, two ranks a node ran two
    threads each on the testbed's shared cores despite OMP_NUM_THREADS=1, and with
    task/affinity every rank of a node would share the server's one CPU."""
    import torch

    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass  # CPUs the server may not use: keep its own
    torch.set_num_threads(intra_op_threads(env, len(os.sched_getaffinity(0))))


# ---------------------------------------------------------------------------------------
# The server


@dataclass
class _Caller:
    conn: socket.socket
    pid: int | None = None
    buffer: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)


class Server:
    """Accepts callers on the socket and forks a rank for each; single-threaded, so a fork
    never copies a lock another thread held."""

    def __init__(self, path: Path, say=lambda line: print(line, file=sys.stderr, flush=True)):
        self.path = path
        self.say = say
        self.selector = selectors.DefaultSelector()
        self.callers: dict[int, _Caller] = {}  # by connection fd
        self.stopping = False
        self.listener: socket.socket | None = None

    def listen(self) -> None:
        """Bind at a temporary name and rename it into place: a socket that exists is ready."""
        private_dir(self.path)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp))
        listener.listen(64)
        os.replace(tmp, self.path)
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ)

    def serve_forever(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._stop)
        try:
            while not self.stopping:
                for key, _ in self.selector.select(timeout=0.05):
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        self._readable(self.callers[key.fd])
                self._reap()
        finally:
            self.close()

    def _stop(self, _signum, _frame) -> None:
        self.stopping = True

    def close(self) -> None:
        for caller in list(self.callers.values()):
            self._kill(caller)
            self._drop(caller)
        if self.listener is not None:
            self.path.unlink(missing_ok=True)
            self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        uid = _peer_uid(conn)
        if uid != os.getuid():
            self.say(f"pitstop.recipes.warm: refused a caller with uid {uid}")
            conn.close()
            return
        conn.setblocking(False)
        self.callers[conn.fileno()] = _Caller(conn)
        self.selector.register(conn, selectors.EVENT_READ)

    def _readable(self, caller: _Caller) -> None:
        try:
            data, fds = _recv_with_fds(caller.conn)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        caller.fds += fds
        if not data:  # the caller is gone (its step was killed): so is its rank
            self._kill(caller)
            if caller.pid is None:
                self._drop(caller)
            else:  # reaped soon; stop watching a closed connection meanwhile
                self.selector.unregister(caller.conn)
            return
        if caller.pid is not None:
            return  # nothing more is expected from a caller whose rank runs
        caller.buffer += data
        if b"\n" not in caller.buffer:
            if len(caller.buffer) > _MAX_REQUEST:
                self._reply(caller, {"error": "request too long"})
                self._drop(caller)
            return
        try:
            request = json.loads(caller.buffer[:caller.buffer.index(b"\n")])
            module, argv, env, cwd = request["module"], request["argv"], request["env"], request["cwd"]
            cpus = [int(cpu) for cpu in request.get("cpus") or []]
            if len(caller.fds) != 3:
                raise ValueError(f"expected 3 file descriptors, got {len(caller.fds)}")
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(caller, {"error": f"bad request: {exc}"})
            self._drop(caller)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become_rank(caller, module, argv, env, cwd, cpus)
        caller.pid = pid
        for fd in caller.fds:
            os.close(fd)
        caller.fds = []
        self._reply(caller, {"pid": pid})
        self.say(f"pitstop.recipes.warm: forked pid {pid}: {module} {' '.join(argv)} "
                 f"(attempt {env.get('PITSTOP_ATTEMPT', '?')}, step {env.get('SLURM_STEP_ID', '?')}, "
                 f"task {env.get('SLURM_PROCID', '?')})")

    def _become_rank(self, caller: _Caller, module: str, argv: list[str], env: dict, cwd: str,
                     cpus: list[int]) -> NoReturn:
        code = 1
        try:
            os.setsid()
            _die_with_parent()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            for target, fd in enumerate(caller.fds):
                os.dup2(fd, target)
            keep = {0, 1, 2}
            for fd in [*caller.fds, caller.conn.fileno(), self.listener.fileno(),
                       self.selector.fileno() if hasattr(self.selector, "fileno") else -1,
                       *(c.conn.fileno() for c in self.callers.values())]:
                if fd not in keep and fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            take_cpus(cpus, env)
            code = run_module(module, argv)
        except BaseException:  # noqa: BLE001 - the child must never return into the server
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _reap(self) -> None:
        while self.callers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            caller = next((c for c in self.callers.values() if c.pid == pid), None)
            if caller is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            self._reply(caller, {"status": code})
            self._drop(caller)

    def _kill(self, caller: _Caller) -> None:
        if caller.pid is not None:
            try:
                os.killpg(caller.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _reply(self, caller: _Caller, message: dict) -> None:
        try:
            caller.conn.setblocking(True)
            caller.conn.sendall(json.dumps(message).encode() + b"\n")
            caller.conn.setblocking(False)
        except OSError:
            pass

    def _drop(self, caller: _Caller) -> None:
        self.callers.pop(caller.conn.fileno(), None)
        try:
            self.selector.unregister(caller.conn)
        except (KeyError, ValueError):
            pass
        for fd in caller.fds:
            os.close(fd)
        caller.fds = []
        caller.conn.close()


def run_module(module: str, argv: list[str]) -> int:
    """`python -m MODULE ARGV…` in this process; the exit status it would have."""
    import runpy

    sys.argv = [module, *argv]
    sys.modules.pop(module, None)  # run as __main__, afresh, as `python -m` would
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def _peer_uid(conn: socket.socket) -> int:
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _recv_with_fds(conn: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(16 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds)


def _die_with_parent() -> None:
    """A rank whose server died must not run on unseen: it gets SIGKILL with it. It is
    named `pitstop-rank` where ps and top show a process's name."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(RANK_NAME.encode()))
    except (OSError, AttributeError):
        pass


def training_ranks(run_dir: Path, job_id: str) -> list[int]:
    """The pids of a run's training ranks on this host: started cold (the runtime on its
    run dir; not torchrun, nor the warm client that stands for a rank), or forked by the
    job's warm servers."""
    import psutil

    run_dir, pids = str(run_dir), []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        try:
            if run_dir in cmdline and "pitstop.recipes.train" in cmdline and __name__ not in cmdline and \
                    not any("torchrun" in c for c in cmdline[:2]):
                pids.append(proc.info["pid"])
            elif cmdline[1:] == ["-m", __name__, "serve"] and proc.environ().get("SLURM_JOB_ID") == job_id:
                pids += [child.pid for child in proc.children()]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(pids)


# A deferred server (a spare node's) imports once the step trains, once a rank asks for
# it, or after this long at the most.
DEFER_MAX_S = 60.0
ASKED = "a rank asked for it"


def defer(path: Path, run_dir: Path | None, since: float, limit_s: float = DEFER_MAX_S) -> str:
    """Wait to import until the run's heartbeat is newer than `since` (its step trains:
    the imports no longer slow its ranks' start on a host they share), a client wants
    this server (`wanted_marker`), or `limit_s` passed; says which."""
    from pitstop.waiting import wait_until

    heartbeat = run_dir / "heartbeat.json" if run_dir else None

    def woken() -> str:
        if wanted_marker(path).exists():
            return ASKED
        try:
            return "the step trains" if heartbeat is not None and heartbeat.stat().st_mtime >= since else ""
        except OSError:
            return ""

    try:
        return wait_until(woken, limit_s - (time.time() - since), what="the step to train", interval=0.1)
    except TimeoutError:
        return f"{limit_s:.0f} s passed"


def serve(path: Path, deferred: bool = False) -> int:
    started, since = time.monotonic(), time.time()
    server = Server(path)
    marker = starting_marker(path)
    private_dir(path)
    write_atomic(marker, str(os.getpid()))
    try:
        why = ""
        if deferred:
            run_dir = os.environ.get("PITSTOP_RUN_DIR")
            why = defer(path, Path(run_dir) if run_dir else None, since)
            server.say(f"pitstop.recipes.warm: importing on {path} after {time.monotonic() - started:.2f} s ({why})")
        if deferred and why != ASKED:
            run_yielding(preload)  # the step trains: yield to it (a rank that asked cannot wait)
        else:
            preload()
        server.listen()
    finally:
        marker.unlink(missing_ok=True)
        wanted_marker(path).unlink(missing_ok=True)
    server.say(f"pitstop.recipes.warm: ready on {path} after {time.monotonic() - started:.2f} s "
               f"(pid {os.getpid()})")
    server.serve_forever()
    return 0


# ---------------------------------------------------------------------------------------
# The client


# A server the batch script started just before the step writes its marker within
# moments; a client that sees none by then runs cold.
MARKER_GRACE_S = 10.0


def connect(path: Path, wait_s: float = 0.0) -> socket.socket | None:
    """A connection to the node's server; with `wait_s`, waits up to that long for a
    server that is starting (its marker is there and its pid lives), MARKER_GRACE_S of
    it for one to show up. None: no server to use."""
    started = time.monotonic()
    marker_seen = marker_gone = None  # when the marker was first seen, and seen gone
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(path))
            return conn
        except OSError:
            conn.close()
        now = time.monotonic()
        if now - started >= wait_s:
            return None
        pid = _marker_pid(starting_marker(path))
        if pid is not None:
            if not _alive(pid):
                return None  # the server died importing
            if marker_seen is None:  # a deferred server imports now
                try:
                    wanted_marker(path).touch()
                except OSError:
                    pass
            marker_seen, marker_gone = marker_seen or now, None
        elif marker_seen is None and now - started >= MARKER_GRACE_S:
            return None  # no server is starting here
        elif marker_seen is not None:  # its socket is in place by now, or it failed
            marker_gone = marker_gone or now
            if now - marker_gone >= 1.0:
                return None
        time.sleep(0.05)


def _marker_pid(marker: Path) -> int | None:
    try:
        return int(marker.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether `pid` is a warm server still (not a process that got its pid since)."""
    try:
        return b"pitstop.recipes.warm\0serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def run(module: str, argv: list[str], path: Path | None = None, wait_s: float | None = None) -> int:
    """Run MODULE ARGV… as this process would, through the node's server when there is
    one (waiting `wait_s`, default $PITSTOP_WARM_WAIT, for one that is starting), else
    cold (exec: the same process, the same pid to Slurm)."""
    if wait_s is None:
        try:
            wait_s = float(os.environ.get("PITSTOP_WARM_WAIT") or 0)
        except ValueError:
            wait_s = 0.0
    try:
        path = path or socket_path()
    except WarmError:
        _cold(module, argv)
    waiting_since = time.monotonic()
    conn = connect(path, wait_s)
    if conn is None:
        if wait_s > 0:
            print(f"pitstop.recipes.warm: no server at {path} after {time.monotonic() - waiting_since:.1f} s; "
                  "starting the rank cold", file=sys.stderr)
        _cold(module, argv)
    request = {"module": module, "argv": argv, "env": dict(os.environ), "cwd": os.getcwd(),
               "cpus": sorted(os.sched_getaffinity(0))}
    try:
        conn.sendmsg([json.dumps(request).encode() + b"\n"],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        reader = conn.makefile("rb")
        first = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError):
        first = {}
    if "pid" not in first:
        print(f"pitstop.recipes.warm: the server at {path} did not start the rank "
              f"({first.get('error', 'no answer')}); starting it cold", file=sys.stderr)
        conn.close()
        _cold(module, argv)
    pid = first["pid"]

    def forward(signum, _frame) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    try:
        line = reader.readline()
        status = json.loads(line).get("status") if line else None
    except (OSError, ValueError):
        status = None
    if status is None:
        print(f"pitstop.recipes.warm: lost the server at {path} while rank pid {pid} ran; ending it",
              file=sys.stderr)
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return 1
    if status < 0:  # killed by a signal: end the same way, so srun reports it so
        signum = -status
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    return status


def _cold(module: str, argv: list[str]) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m pitstop.recipes.warm serve [--defer]\n"
             "       python -m pitstop.recipes.warm run MODULE [ARG ...]")
    if args[:1] == ["serve"] and args[1:] in ([], ["--defer"]):
        try:
            return serve(socket_path(), deferred=args[1:] == ["--defer"])
        except WarmError as exc:
            print(f"pitstop.recipes.warm: {exc}", file=sys.stderr)
            return 2
    if args[:1] == ["run"] and len(args) >= 2:
        return run(args[1], args[2:])
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
