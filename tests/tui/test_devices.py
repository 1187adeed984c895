"""Per-device readings in the node detail: from state files in the agent's shape,
through the local provider, to the table a person reads."""

from __future__ import annotations

from pitstop.tui import devices
from pitstop.tui.providers import LocalProvider
from tui_fake import DEVICES, RecordedProvider, gpu, write_state
from tui_pilot import pilot_test, shown, started, wait_for


def row(entry) -> list[str]:
    return [cell.plain for cell in devices.device_cells(entry)]


def test_the_local_provider_reads_one_nodes_devices_from_its_state_file(tmp_path):
    write_state(tmp_path / "gpu-7.json", "gpu-7", DEVICES["node1"])
    write_state(tmp_path / "old-1.json", "old-1")  # an agent from before `devices`
    provider = LocalProvider(state_dir=tmp_path)
    assert provider.devices("gpu-7") == DEVICES["node1"]
    assert provider.devices("old-1") is None and provider.devices("nowhere") is None
    assert "publishes no per-device readings" in shown(devices.device_table(None))


def test_the_testbed_layout_and_the_newest_file_win(tmp_path):
    write_state(tmp_path / "node1.json", "node1", [], updated_at=50.0)
    write_state(tmp_path / "node1" / "node1.json", "node1", DEVICES["node2"], updated_at=60.0)
    (tmp_path / "node2.json").write_text('{"node": "node2", "telem')  # torn: no devices, no crash
    provider = LocalProvider(state_dir=tmp_path)
    assert provider.devices("node1") == DEVICES["node2"]
    assert provider.devices("node2") is None


def test_a_gpu_row_says_temperature_power_memory_ecc_remap_and_pcie():
    cells = row({"device": "gpu1", "kind": "gpu", "healthy": False, "finding": "double-bit ECC error",
                 "readings": gpu(1, ecc_dbe_volatile=1, ecc_sbe_volatile=3, row_remap_pending=True,
                                 pcie_width=8)})
    assert cells == ["gpu1", "FAULT", "41 °C", "312 W", "97% mem 61%",
                     "61.0 GiB / 80.0 GiB", "3/1 (life 2/0)", "remap pending", "gen 5/5 x8/16 degraded",
                     "double-bit ECC error"]
    assert row(DEVICES["node1"][0])[6:9] == ["0/0 (life 2/0)", "none pending", "gen 5/5 x16/16"]


def test_missing_keys_neuron_devices_and_device_files_alone_are_shown_not_fatal():
    assert row({"device": "gpu3"}) == ["gpu3", "-", "-", "-", "-", "-", "-", "-", "-",
                                       "no readings"]
    assert row({"device": "gpu0", "readings": gpu(0, temperature_c=None, power_w=None, pcie_gen=None,
                                                    pcie_gen_max=None, pcie_width=None, pcie_width_max=None,
                                                    memory_used_bytes=None)})[2:9] == \
        ["-", "-", "97% mem 61%", "- / 80.0 GiB", "0/0 (life 2/0)", "none pending", "-"]
    neuron = row({"device": "neuron0", "kind": "neuron", "healthy": True, "finding": None,
                  "readings": {"index": 0, "mem_ecc_corrected": 4, "mem_ecc_uncorrected": 0,
                               "sram_ecc_corrected": 0, "sram_ecc_uncorrected": None}})
    assert neuron[:2] == ["neuron0", "ok"] and neuron[6] == "mem 4/0 sram 0/-"
    alone = row({"device": "gpu0", "kind": "gpu", "healthy": True, "finding": None,
                 "readings": {"path": "/dev/nvidia0"}})
    assert alone[1] == "ok" and alone[-1] == "/dev/nvidia0: no readings (device file only)"
    assert "no accelerators" in shown(devices.device_table([]))


@pilot_test
async def test_the_node_detail_shows_each_device_once_the_readings_arrive():
    async with started(RecordedProvider(), size=(160, 40)) as (app, pilot):
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: getattr(app.screen, "devices_loaded", False), what="the readings")
        text = shown(app.screen.query_one("#detail-devices").content)
        assert "gpu0" in text and "gen 3/5 x16/16 degraded" in text
        assert "FAULT" in text and "GPU has fallen off the bus" in text
        await pilot.press("escape", "down", "enter")
        await wait_for(pilot, lambda: getattr(app.screen, "devices_loaded", False), what="node3's readings")
        assert "publishes no per-device readings" in shown(app.screen.query_one("#detail-devices").content)
