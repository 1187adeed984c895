"""The agent as a service: systemd's notify protocol (READY, WATCHDOG, STOPPING) over a
real datagram socket, /status and /metrics over loopback, and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from pitstop.waiting import wait_until

pytestmark = pytest.mark.slurm


def test_agent_speaks_sd_notify_serves_status_and_stops_cleanly(testbed, tmp_path):
    layout = testbed.layout
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.2)
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    boot = tmp_path / "boot_id"
    boot.write_text("0d9c0e6a-1111-2222-3333-444455556666\n")
    env = {**os.environ, **layout.env(), "NOTIFY_SOCKET": str(notify_path),
           "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "pitstop", "agent", "run", "--config", "/dev/null",
                             "--node", "node1", "--kmsg", str(kmsg), "--boot-id-file", str(boot),
                             "--state-dir", str(tmp_path / "state"), "--port", "0", "--nvml", "off",
                             "--neuron", "off"], env=env, stderr=subprocess.PIPE, text=True)
    messages: list[str] = []

    def received(wanted: str) -> bool:
        try:
            messages.extend(sock.recv(4096).decode().split("\n"))
        except socket.timeout:
            pass
        return any(m.startswith(wanted) for m in messages)

    try:
        wait_until(lambda: received("READY=1"), 30, what="READY=1 from the agent")
        wait_until(lambda: received("WATCHDOG=1"), 10, what="a watchdog ping")
        state = wait_until(lambda: (st := _state(tmp_path / "state" / "node1.json")) and
                           st["telemetry"].get("port") and st, 10, what="state file naming the port")
        port = state["telemetry"]["port"]
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
        assert status["node"] == "node1" and status["health"] == "OK"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "pitstop_health_state" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        wait_until(lambda: received("STOPPING=1"), 5, what="STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert "Traceback" not in proc.stderr.read()


def _state(path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
