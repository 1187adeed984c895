"""What the views say, and how the tables change between refreshes, on recorded data."""

from __future__ import annotations

import copy
import json

import pytest

from pitstop.tui import views, wire
from pitstop.tui.app import PitstopApp, binding_ids
from pitstop.tui.config import load_config
from pitstop.tui.data import ClusterView
from tui_fake import T0, RecordedProvider, recorded_view
from tui_pilot import message, pilot_test, row_text, started, status, wait_for


def test_views_resolve_from_names_aliases_and_unique_prefixes():
    assert [views.resolve_view(w) for w in ("nodes", "no", "jo", "ckpt", "cp", "rc", "ev", "rec")] == \
        ["nodes", "nodes", "jobs", "ckpt", "ckpt", "recipes", "events", "recipes"]
    assert views.resolve_view("zz") is None


def test_a_filter_is_a_regex_and_bang_negates():
    cells = [views.Cell("node2"), views.Cell("idle+drain")]
    assert views.parse_filter("node[23]").matches(cells)
    assert not views.parse_filter("!drain").matches(cells)
    assert views.parse_filter("!node1").matches(cells)
    with pytest.raises(ValueError, match="bad filter"):
        views.parse_filter("node[")


def test_rows_say_what_a_person_needs():
    view = recorded_view()
    job = " ".join(c.plain for c in views.view_rows("jobs", view)["41"])
    assert "120/300" in job and "2.6500" in job and "15,234" in job and "1m30s" in job and "step 100" in job
    assert views.sparkline([3.0, 2.0, 1.0]) == "█▄▁"
    ckpt = views.view_rows("ckpt", view)
    assert [k.split("#")[1] for k, c in ckpt.items() if "restart loads" in c[-1].plain] == ["100"]
    events = views.view_rows("events", view)
    assert len(events) == 5


def test_the_view_crosses_ssh_as_json_unchanged():
    view = recorded_view()
    again = ClusterView.from_dict(copy.deepcopy(view.to_dict()))
    assert again.to_dict() == view.to_dict()


def test_over_the_wire_only_changed_rows_are_parsed_and_the_rest_are_the_same_objects():
    view = recorded_view()
    decoder = wire.Decoder()
    first = decoder.decode(wire.encode(view))
    assert first.to_dict() == view.to_dict() and decoder.parsed == 4 + 2 + 3 + 5
    view.nodes[2].slurm_state = "idle"
    view.nodes[0].agent_updated_at = T0 + 1  # an agent saved again: its N line is unchanged
    view.jobs[0].progress.step = 121
    second = decoder.decode(wire.encode(view))
    assert second.to_dict() == view.to_dict() and decoder.parsed == 3
    assert second.nodes[1] is first.nodes[1] and second.events[0] is first.events[0]
    assert second.nodes[2] is not first.nodes[2] and first.nodes[2].slurm_state == "idle+drain"
    assert first.nodes[0].agent_updated_at == T0 - 5  # the last view's rows are never changed
    old_style = decoder.decode(json.dumps(view.to_dict()))  # a login node with an older pitstop
    assert old_style.to_dict() == view.to_dict()
    with pytest.raises(ValueError, match="not a pitstop view"):
        decoder.decode("bash: pitstop: command not found\n")


def test_a_watch_stream_sends_only_the_changed_rows_and_the_view_is_whole_again():
    view = recorded_view()
    encoder, decoder = wire.DeltaEncoder(), wire.Decoder()
    assert decoder.decode(encoder.encode(view)).to_dict() == view.to_dict()
    whole = len(wire.encode(view))
    view.nodes[1].slurm_state = "down+drain"
    del view.nodes[3]
    view.events.insert(0, {"time": T0 + 9, "node": "node1", "kind": "warning", "message": "hot"})
    delta = encoder.encode(view)
    assert len(delta) < whole / 2 and '"down+drain"' in delta and "mixtral" not in delta
    assert decoder.decode(delta).to_dict() == view.to_dict()
    with pytest.raises(ValueError, match="does not have"):  # a delta to a side that missed the last
        wire.Decoder().decode(encoder.encode(view))
    with pytest.raises(wire.RemoteError, match="slurmctld"):
        decoder.decode(wire.error_answer("Slurm: slurmctld is not responding"))


def test_the_config_file_is_checked(tmp_path):
    good = tmp_path / "tui.yaml"
    good.write_text("keymap:\n  pitstop.drain: x\ninterval: 5\n")
    assert load_config(good, binding_ids()) == {"keymap": {"pitstop.drain": "x"}, "interval": 5}
    bad = tmp_path / "bad.yaml"
    bad.write_text("keymap:\n  pitstop.drian: x\n")
    with pytest.raises(ValueError, match="unknown binding id.*pitstop.drian"):
        load_config(bad, binding_ids())
    bad.write_text("colour: red\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_config(bad, binding_ids())


@pilot_test
async def test_a_refresh_updates_rows_by_key_and_keeps_the_cursor():
    provider = RecordedProvider()
    async with started(provider) as (app, pilot):
        table = app.main.table("nodes")
        await pilot.press("down", "down")
        assert table.selected_key() == "node3"
        first_cells = table.get_row("node1")
        provider.view.nodes[2].slurm_state = "idle"
        provider.view.nodes[2].reason = ""
        provider.view.taken_at = T0 + 2
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.refreshes >= 2, what="the second refresh")
        assert table.last_changed == ["node3"] and app.row_memos["nodes"].formatted == 1
        assert table.get_row("node1") is first_cells  # an unchanged row is not formatted again
        assert "bad DIMM" not in row_text(app, "nodes", "node3") and table.selected_key() == "node3"
        assert "09:06:42" in status(app)


@pilot_test
async def test_a_failed_refresh_keeps_the_rows_marked_stale_with_the_error():
    app = PitstopApp(RecordedProvider(fail_after=1), interval=3600)
    async with app.run_test(size=(140, 32)) as pilot:
        await wait_for(pilot, lambda: app.refreshes >= 1, what="the first refresh")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.last_error, what="the failed refresh")
        assert "STALE, last good refresh 2025-12-01 09:06:40 UTC" in status(app)
        assert "connection to root@login1 lost" in status(app)
        assert row_text(app, "nodes", "node2") is not None


@pilot_test
async def test_escape_goes_back_and_unknown_views_are_messages():
    app = PitstopApp(RecordedProvider(), interval=3600)
    async with app.run_test(size=(140, 32)) as pilot:
        await wait_for(pilot, lambda: app.refreshes >= 1, what="the first refresh")
        await pilot.press("colon", *"jobs", "enter")
        await pilot.press("colon", *"events", "enter")
        assert app.main.view_name == "events"
        await pilot.press("escape")
        assert app.main.view_name == "jobs"
        await pilot.press("colon", *"bogus", "enter")
        assert "unknown view :bogus" in message(app)
        await pilot.press("slash", *"node[", "enter")
        assert "bad filter" in message(app)


@pilot_test
async def test_cancel_and_requeue_confirmed_reach_the_provider():
    provider = RecordedProvider()
    app = PitstopApp(provider, interval=3600)
    async with app.run_test(size=(140, 32)) as pilot:
        await wait_for(pilot, lambda: app.refreshes >= 1, what="the first refresh")
        await pilot.press("colon", *"jobs", "enter")
        await pilot.press("c")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: ("cancel", "41") in provider.actions, what="the cancel")
        await pilot.press("d")
        assert "drain: switch to :nodes" in message(app)


def big_view(nodes: int) -> ClusterView:
    from pitstop.tui.bench import recorded_cluster

    return recorded_cluster(nodes, 8, nodes // 2, events=0)


@pilot_test
async def test_a_big_table_pages_and_keeps_the_cursor_in_view_and_on_its_row():
    async with started(RecordedProvider(view=big_view(3000))) as (app, pilot):
        table = app.main.table("nodes")
        await pilot.pause()  # the layout settles (a horizontal scroll bar) before the keys
        assert table.row_count == 3000 and "Nodes [3000]" in table.border_title
        visible = table.scrollable_content_region.height - 1
        await pilot.press("pagedown", "pagedown")
        assert table.cursor_row == 2 * visible and table.scroll_y > 0
        assert table.scroll_y <= table.cursor_row < table.scroll_y + visible
        await pilot.press("end")
        assert table.selected_key() == "gpu-03000"
        assert table.scroll_y <= table.cursor_row < table.scroll_y + visible
        await pilot.press("home", "down")
        assert table.selected_key() == "gpu-00002" and table.scroll_y == 0
        await pilot.press("S")  # NODE reversed: the selected node goes far down, and the view with it
        assert table.selected_key() == "gpu-00002" and table.cursor_row == 2998
        assert table.scroll_y <= table.cursor_row < table.scroll_y + visible
        await pilot.press("s")  # sort by SLURM: the cursor stays on its node
        assert table.sort_column == "slurm" and table.selected_key() == "gpu-00002"
        assert "sort SLURM ↑" in table.border_title


@pilot_test
async def test_a_click_on_a_header_sorts_and_a_second_click_on_a_row_opens_it():
    async with started(RecordedProvider()) as (app, pilot):
        table = app.main.table("nodes")
        health_x = 1 + sum(w + 2 for w in table.widths[:2]) + 2  # inside PITSTOP's header
        await pilot.click(table, offset=(health_x, 1))
        assert table.sort_column == "health"
        assert [table.order[0], table.order[-1]] == ["node1", "node2"]  # OK first, FENCED last
        await pilot.click(table, offset=(3, 4))  # the third row
        assert table.selected_key() == table.order[2]
        await pilot.click(table, offset=(3, 4))
        await wait_for(pilot, lambda: type(app.screen).__name__ == "DetailScreen", 5, what="the detail")


@pilot_test
async def test_a_refresh_under_a_filter_and_a_sort_adds_drops_and_moves_only_the_rows_that_changed():
    provider = RecordedProvider()
    async with started(provider) as (app, pilot):
        table = app.main.table("nodes")
        await pilot.press("slash", *"drain", "enter", "s", "s", "S")  # /drain, sorted by SLURM, reversed
        assert table.order == ["node2", "node3"] and "Nodes [2 of 4]" in table.border_title
        provider.view.nodes[2].slurm_state = "idle"  # node3 leaves the filter
        provider.view.nodes[0].slurm_state = "mixed+drain"  # node1 enters it, first in the order
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.refreshes >= 2, what="the second refresh")
        assert sorted(table.last_changed) == ["node1", "node3"]
        assert table.order == ["node1", "node2"] and "Nodes [2 of 4]" in table.border_title
        await pilot.press("escape")  # the filter goes: every row, still sorted
        assert table.order == ["node1", "node4", "node2", "node3"]
