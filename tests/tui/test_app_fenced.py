"""A fence the agent itself made, as the TUI shows it: real agents on the testbed, a
fault written into a node's kernel log, and the row, the reason and the node detail's
devices read from what the agent wrote."""

from __future__ import annotations

import pytest

from pitstop.tui.app import PitstopApp
from pitstop.tui.providers import LocalProvider
from pitstop.waiting import wait_until
from tui_pilot import pilot_test, row_text, select, shown, wait_for

pytestmark = pytest.mark.slurm


@pytest.fixture
def agents(testbed, slurm):
    with testbed.agents_running(["--kmsg-poll", "0.05"]) as bed:
        yield bed


@pilot_test
async def test_a_node_the_agent_fenced_shows_fenced_with_its_reason_and_the_faulty_device(agents, slurm):
    agents.inject("node3", "xid:64:1")  # Row Remapper failure on gpu1: the policy drains
    app = PitstopApp(LocalProvider(slurm=slurm, state_dir=agents.layout.agent_root), interval=0.3)
    async with app.run_test(size=(170, 36)) as pilot:
        row = await wait_for(pilot, lambda: (r := row_text(app, "nodes", "node3")) and "FENCED(drain)" in r
                             and "pitstop: " in r and r, 30, what="node3 fenced by its agent")
        assert "drain" in row and "xid 64 gpu1" in row
        assert "FENCED" not in row_text(app, "nodes", "node1")
        assert slurm.node("node3").fenced_by_pitstop
        # The agent lists its devices with its next save after a host poll.
        wait_until(lambda: app.provider.devices("node3"), 30, what="node3's agent to publish its devices")
        await select(pilot, "nodes", "node3")
        await pilot.press("enter")
        await wait_for(pilot, lambda: getattr(app.screen, "devices_loaded", False), 10, what="the readings")
        devices = {line.split()[0]: line for line in
                   shown(app.screen.query_one("#detail-devices").content).splitlines()[1:] if line.strip()}
        assert sorted(devices) == ["gpu0", "gpu1"]
        assert "FAULT" in devices["gpu1"] and "Row Remapper: Failed to mark row" in devices["gpu1"]
        assert " ok " in devices["gpu0"] and "device file only" in devices["gpu0"]
