"""The SSH provider against the testbed's real sshd on loopback."""

from __future__ import annotations

import pytest

from pitstop.testbed.sshd import HOST_ALIAS, ssh_paths
from pitstop.tui.providers import LocalProvider, ProviderError, SshProvider, ssh_target
from pitstop.waiting import wait_until
from tui_fake import DEVICES, write_state

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


def ssh_provider(testbed, known_hosts=None, state_dir=None) -> SshProvider:
    layout = testbed.layout
    paths = ssh_paths(layout)
    target = ssh_target(f"root@127.0.0.1:{layout.ssh_port}", key_file=str(paths["user_key"]),
                        known_hosts=str(known_hosts or paths["known_hosts"]))
    return SshProvider(target, state_dir=str(state_dir or layout.agent_root))


def test_over_ssh_the_view_has_the_same_nodes_as_locally(testbed_ssh, slurm):
    slurm.drain("node4", "pitstop: ecc dbe gpu0")
    provider = ssh_provider(testbed_ssh)
    try:
        remote = provider.fetch()
    finally:
        provider.close()
    local = LocalProvider(slurm=slurm, state_dir=testbed_ssh.layout.agent_root).fetch()
    assert [(n.node, n.slurm_state, n.reason) for n in remote.nodes] == \
        [(n.node, n.slurm_state, n.reason) for n in local.nodes]
    assert remote.node("node4").reason == "pitstop: ecc dbe gpu0"
    assert remote.source.startswith("ssh · root@127.0.0.1")


def test_refreshes_over_ssh_share_one_far_side_process_and_follow_changes(testbed_ssh, slurm):
    provider = ssh_provider(testbed_ssh)
    try:
        first = provider.fetch()
        stream = provider._stream
        slurm.drain("node1", "pitstop: xid 94 gpu0 contained ECC error")
        second = provider.fetch()
        assert provider._stream is stream and provider.connects == 1
        assert "drain" not in first.node("node1").slurm_state
        assert second.node("node1").reason == "pitstop: xid 94 gpu0 contained ECC error"
        assert [n.node for n in second.nodes] == ["node1", "node2", "node3", "node4"]
    finally:
        provider.close()
        slurm.resume("node1")


def test_an_alias_of_the_ssh_config_resolves_like_openssh(testbed_ssh):
    paths = ssh_paths(testbed_ssh.layout)
    target = ssh_target(HOST_ALIAS, ssh_config=str(paths["client_config"]))
    assert (target.host, target.port, target.user) == ("127.0.0.1", testbed_ssh.layout.ssh_port, "root")
    assert target.known_hosts == str(paths["known_hosts"])
    provider = SshProvider(target, state_dir=str(testbed_ssh.layout.agent_root))
    try:
        assert len(provider.fetch().nodes) == 4
    finally:
        provider.close()


def test_an_unknown_host_key_is_refused_with_a_clear_message(testbed_ssh, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    provider = ssh_provider(testbed_ssh, known_hosts=empty)
    with pytest.raises(ProviderError) as refused:
        provider.fetch()
    message = str(refused.value)
    assert "unknown host key" in message and str(empty) in message and "refuses" in message
    assert "Traceback" not in message and provider.connects == 0


def test_actions_over_ssh_change_slurm(testbed_ssh, slurm):
    provider = ssh_provider(testbed_ssh)
    try:
        provider.drain("node3", "drained from pitstop tui by test")
        assert slurm.node("node3").reason == "drained from pitstop tui by test"
        provider.resume("node3")
        assert not slurm.node("node3").drained
        with pytest.raises(ProviderError, match="not a Slurm job id"):
            provider.cancel("1;reboot")
    finally:
        provider.close()


def test_a_dropped_connection_is_a_message_then_a_reconnect_with_backoff(testbed_ssh):
    provider = ssh_provider(testbed_ssh)
    try:
        provider.fetch()
        provider._client.get_transport().close()
        with pytest.raises(ProviderError, match="lost.*reconnecting in"):
            provider.fetch()
        view = wait_until(lambda: _try(provider.fetch), 10, what="the reconnect")
        assert len(view.nodes) == 4 and provider.connects == 2
    finally:
        provider.close()


def _try(call):
    try:
        return call()
    except ProviderError:
        return None


def test_recipes_are_listed_and_validated_on_the_login_node(testbed_ssh):
    provider = ssh_provider(testbed_ssh)
    try:
        names = [r["name"] for r in provider.recipes()]
        assert "llama3-tiny-seq256-cpu-pretrain" in names
        with pytest.raises(ProviderError, match="trainer.max_stepz"):
            provider.preview("llama3-tiny-seq256-cpu-pretrain", ["trainer.max_stepz=3"])
        preview = provider.preview("llama3-tiny-seq256-cpu-pretrain", ["trainer.max_steps=7"])
        assert "#SBATCH" in preview.script_text and "max_steps: 7" in preview.config_text
    finally:
        provider.close()


def test_a_nodes_devices_come_over_ssh_as_its_state_file_has_them(testbed_ssh, tmp_path):
    write_state(tmp_path / "node1" / "node1.json", "node1", DEVICES["node1"])
    write_state(tmp_path / "node2.json", "node2")  # an older agent: no devices
    provider = ssh_provider(testbed_ssh, state_dir=tmp_path)
    try:
        assert provider.devices("node1") == DEVICES["node1"]
        assert provider.devices("node2") is None and provider.devices("node9") is None
    finally:
        provider.close()
