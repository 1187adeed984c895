"""The app over SSH against the testbed's sshd: the same nodes as locally, and an
unknown host key refused on screen, without a traceback, while the app keeps running."""

from __future__ import annotations

import pytest

from pitstop.testbed.sshd import ssh_paths
from pitstop.tui.app import PitstopApp
from pitstop.tui.providers import LocalProvider, SshProvider, ssh_target
from tui_pilot import pilot_test, row_text, status, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


def provider(testbed, known_hosts=None) -> SshProvider:
    layout = testbed.layout
    paths = ssh_paths(layout)
    target = ssh_target(f"root@127.0.0.1:{layout.ssh_port}", key_file=str(paths["user_key"]),
                        known_hosts=str(known_hosts or paths["known_hosts"]))
    return SshProvider(target, state_dir=str(layout.agent_root))


@pilot_test
async def test_over_ssh_the_nodes_view_shows_what_slurm_says(testbed_ssh, slurm):
    slurm.drain("node2", "pitstop: xid 48 gpu0 double-bit ECC error")
    local = LocalProvider(slurm=slurm, state_dir=testbed_ssh.layout.agent_root).fetch()
    ssh = provider(testbed_ssh)
    app = PitstopApp(ssh, interval=5)
    try:
        async with app.run_test(size=(160, 45)) as pilot:
            await wait_for(pilot, lambda: app.refreshes >= 1, 30, what="the first refresh over SSH")
            for node in local.nodes:
                row = row_text(app, "nodes", node.node)
                assert row is not None and node.slurm_state in row
            assert "pitstop: xid 48 gpu0 double-bit ECC error" in row_text(app, "nodes", "node2")
            assert "ssh · root@127.0.0.1" in status(app)
    finally:
        ssh.close()


@pilot_test
async def test_an_unknown_host_key_is_a_message_on_screen_not_a_traceback(testbed_ssh, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = provider(testbed_ssh, known_hosts=empty)
    app = PitstopApp(ssh, interval=0.2)
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_for(pilot, lambda: app.last_error, 20, what="the refusal")
        shown = status(app)
        assert "unknown host key" in shown and "refuses to connect" in shown
        assert "Traceback" not in shown and app.view is None and ssh.connects == 0
        assert app.main.table("nodes").row_count == 0
        await wait_for(pilot, lambda: "retrying in" in status(app) or "reconnecting in" in status(app),
                       10, what="the retry to be announced")
        assert app.is_running
