"""The warm start: a real server (torch imported) forks the rank a real client asks for;
the client stands for the rank — its streams, environment, working directory, signals and
exit status — and a rank whose client is killed dies with it. Without a server the client
runs the module itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from pitstop.recipes.warm import (DEFERRED_NICENESS, RANK_NAME, WarmError, intra_op_threads, private_dir, run_yielding,
                                  socket_path, starting_marker)
from pitstop.waiting import wait_until

PROBE = textwrap.dedent('''
    """A stand-in rank: reports what it got, then does what its arguments say."""
    import os, signal, sys, time
    from pathlib import Path

    out = Path(sys.argv[1])
    signal.signal(signal.SIGUSR1, lambda *_: (out.with_suffix(".usr1").write_text("x"), sys.exit(7)))
    line = sys.stdin.readline().strip()
    out.with_suffix(".nice").write_text(str(os.nice(0)))
    if "torch" in sys.modules:  # forked by a server: what it runs on
        import torch
        out.with_suffix(".cpus").write_text(f"{sorted(os.sched_getaffinity(0))} {torch.get_num_threads()}")
    out.write_text(f"{os.getpid()} {os.getppid()} {os.getcwd()} {os.environ.get('PROBE_VALUE')} {line}")
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if sys.argv[2] == "wait":
        while True:
            time.sleep(0.05)
    sys.exit(int(sys.argv[2]))
''')


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One server for the module, as a job's step would run it (its socket under TMPDIR)."""
    base = tmp_path_factory.mktemp("warm")
    (base / "probe_rank.py").write_text(PROBE)
    env = {**os.environ, "SLURM_JOB_ID": "31", "SLURMD_NODENAME": "nodeA", "TMPDIR": str(base),
           "PYTHONPATH": str(base)}
    server = subprocess.Popen([sys.executable, "-m", "pitstop.recipes.warm", "serve"], env=env,
                              stderr=subprocess.PIPE, text=True)
    path = socket_path(env)
    try:
        wait_until(lambda: path.exists() or server.poll() is not None, 120, interval=0.1,
                   what="the warm server to listen")
        assert server.poll() is None, server.stderr.read()
        yield base, env, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def _client(env, tmp_path, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pitstop.recipes.warm", "run", "probe_rank", *args],
                            env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_the_server_forks_a_rank_that_gets_the_clients_streams_env_cwd_and_status(warm, tmp_path):
    _, env, server = warm
    out = tmp_path / "probe.txt"
    client = _client({**env, "PROBE_VALUE": "mine"}, tmp_path, str(out), "5")
    stdout, stderr = client.communicate("hello\n", timeout=60)
    assert client.returncode == 5, stderr
    assert stdout == "to stdout\n" and "to stderr" in stderr
    pid, parent, cwd, value, line = out.read_text().split()
    assert int(parent) == server.pid  # forked, not a fresh interpreter
    assert int(pid) != client.pid and cwd == str(tmp_path) and value == "mine" and line == "hello"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to bind a client to one")
def test_a_rank_runs_on_its_clients_cpus_with_the_threads_a_cold_rank_would_have(warm, tmp_path):
    """Slurm binds the task (the client) and the job sets OMP_NUM_THREADS in its
    environment; the forked rank must not keep the server's CPUs and thread count."""
    _, env, _ = warm
    everywhere = sorted(os.sched_getaffinity(0))
    cases = [(["taskset", "-c", str(everywhere[0])], {}, f"[{everywhere[0]}] 1"),
             ([], {"OMP_NUM_THREADS": "1"}, f"{everywhere} 1"),
             ([], {}, f"{everywhere} {len(everywhere)}")]
    for index, (bind, extra, expected) in enumerate(cases):
        out = tmp_path / f"probe{index}.txt"
        client = subprocess.Popen([*bind, sys.executable, "-m", "pitstop.recipes.warm", "run", "probe_rank",
                                   str(out), "0"], env={**env, **extra}, cwd=tmp_path, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, stderr = client.communicate("x\n", timeout=60)
        assert client.returncode == 0, stderr
        assert out.with_suffix(".cpus").read_text() == expected, (bind, extra)


def test_intra_op_threads_are_omp_then_mkl_then_one_per_cpu():
    assert intra_op_threads({"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "5"}, 8) == 3
    assert intra_op_threads({"OMP_NUM_THREADS": "x", "MKL_NUM_THREADS": "5"}, 8) == 5
    assert intra_op_threads({"OMP_NUM_THREADS": "0"}, 8) == 8 and intra_op_threads({}, 0) == 1


def test_a_signal_to_the_client_reaches_the_rank(warm, tmp_path):
    _, env, _ = warm
    out = tmp_path / "probe.txt"
    client = _client(env, tmp_path, str(out), "wait")
    client.stdin.write("x\n")
    client.stdin.flush()
    wait_until(out.exists, 30, interval=0.05, what="the rank to start")
    assert psutil.Process(int(out.read_text().split()[0])).name() == RANK_NAME
    client.send_signal(signal.SIGUSR1)
    client.communicate(timeout=30)
    assert client.returncode == 7 and out.with_suffix(".usr1").exists()


def test_a_killed_client_takes_its_rank_with_it(warm, tmp_path):
    _, env, _ = warm
    out = tmp_path / "probe.txt"
    client = _client(env, tmp_path, str(out), "wait")
    client.stdin.write("x\n")
    client.stdin.flush()
    wait_until(out.exists, 30, interval=0.05, what="the rank to start")
    rank = psutil.Process(int(out.read_text().split()[0]))
    client.kill()  # what `scancel --signal=KILL JOB.STEP` does to a step's tasks
    client.communicate(timeout=30)
    wait_until(lambda: not rank.is_running() or rank.status() == psutil.STATUS_ZOMBIE, 10,
               interval=0.05, what="the rank to end with its client")


def test_a_rank_killed_by_a_signal_ends_its_client_by_the_same_signal(warm, tmp_path):
    _, env, _ = warm
    out = tmp_path / "probe.txt"
    client = _client(env, tmp_path, str(out), "wait")
    client.stdin.write("x\n")
    client.stdin.flush()
    wait_until(out.exists, 30, interval=0.05, what="the rank to start")
    os.kill(int(out.read_text().split()[0]), signal.SIGKILL)
    client.communicate(timeout=30)
    assert client.returncode == -signal.SIGKILL


def test_without_a_server_the_client_runs_the_module_itself(warm, tmp_path):
    _, env, _ = warm
    out = tmp_path / "probe.txt"
    client = _client({**env, "SLURM_JOB_ID": "32"}, tmp_path, str(out), "3")  # no server for job 32
    stdout, stderr = client.communicate("cold\n", timeout=60)
    assert client.returncode == 3, stderr
    pid, *_rest, line = out.read_text().split()
    assert int(pid) == client.pid and line == "cold"  # exec'd in place: the same process


def test_the_socket_directory_must_be_private(tmp_path):
    shared = tmp_path / f"pitstop-warm-{os.getuid()}"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(WarmError, match=f"{shared}: must be a directory owned by uid .* with mode 0700"):
        private_dir(shared / "1-n.sock")


def test_outside_a_slurm_step_there_is_no_socket():
    with pytest.raises(WarmError, match="not inside a Slurm step"):
        socket_path({})


def test_a_client_waits_for_the_server_that_is_still_starting(warm, tmp_path):
    """The batch script starts the servers just before the step: a rank that finds its
    server still importing torch waits for it (PITSTOP_WARM_WAIT) and is forked by it,
    rather than importing torch beside it."""
    base, env, _ = warm
    env = {**env, "SLURM_JOB_ID": "33", "PITSTOP_WARM_WAIT": "120"}
    server = subprocess.Popen([sys.executable, "-m", "pitstop.recipes.warm", "serve"], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        marker = starting_marker(socket_path(env))
        wait_until(lambda: marker.exists() or socket_path(env).exists() or server.poll() is not None, 60,
                   interval=0.01, what="the server to start")
        assert marker.exists() and not socket_path(env).exists(), "the server should still be importing"
        assert marker.read_text() == str(server.pid)
        out = tmp_path / "probe.txt"
        client = _client(env, tmp_path, str(out), "0")
        stdout, stderr = client.communicate("late\n", timeout=120)
        assert client.returncode == 0, stderr
        assert int(out.read_text().split()[1]) == server.pid  # forked by the server it waited for
        assert not marker.exists() and socket_path(env).exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_client_does_not_wait_for_a_server_that_died_starting(warm, tmp_path):
    base, env, _ = warm
    env = {**env, "SLURM_JOB_ID": "34", "PITSTOP_WARM_WAIT": "120"}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    marker = starting_marker(socket_path(env))
    private_dir(socket_path(env))
    marker.write_text(str(dead.pid))  # what a server killed while it imported leaves
    out = tmp_path / "probe.txt"
    client = _client(env, tmp_path, str(out), "0")
    stdout, stderr = client.communicate("cold\n", timeout=60)
    assert client.returncode == 0, stderr
    assert int(out.read_text().split()[0]) == client.pid  # cold: exec'd in place
    assert "starting the rank cold" in stderr


@pytest.mark.parametrize("trigger", ["the step trains", "a rank asked for it"])
def test_a_deferred_server_imports_once_the_step_trains_or_a_rank_asks(warm, tmp_path, trigger):
    """A spare's server (`serve --defer`) waits to import torch until the run's heartbeat
    is newer than the server (its step trains), or until a rank that needs it asks. The
    ranks it forks run at the server's priority (its imports beside a training step ran
    niced, in a thread of their own)."""
    base, env, _ = warm
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**env, "SLURM_JOB_ID": f"35{len(trigger)}", "PITSTOP_WARM_WAIT": "120", "PITSTOP_RUN_DIR": str(run_dir)}
    server = subprocess.Popen([sys.executable, "-m", "pitstop.recipes.warm", "serve", "--defer"], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        marker = starting_marker(socket_path(env))
        wait_until(lambda: marker.exists() or server.poll() is not None, 60, interval=0.01,
                   what="the deferred server to start")
        if trigger == "the step trains":
            (run_dir / "heartbeat.json").write_text('{"step": 1}')
            wait_until(lambda: socket_path(env).exists() or server.poll() is not None, 120, interval=0.1,
                       what="the server to import and listen")
        out = tmp_path / "probe.txt"
        client = _client(env, tmp_path, str(out), "0")  # where it still defers, this asks
        stdout, stderr = client.communicate("asked\n", timeout=120)
        assert client.returncode == 0, stderr
        assert int(out.read_text().split()[1]) == server.pid  # forked by the server
        assert int(out.with_suffix(".nice").read_text()) == os.nice(0)
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"({trigger})" in server.stderr.read()


def test_work_run_yielding_runs_niced_in_its_own_thread_and_raises_its_error():
    seen = []
    run_yielding(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
    assert seen == [max(DEFERRED_NICENESS, os.nice(0))] and os.nice(0) < DEFERRED_NICENESS
    with pytest.raises(ImportError, match="no such module"):
        run_yielding(lambda: (_ for _ in ()).throw(ImportError("no such module")))
