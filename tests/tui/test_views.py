"""What the views say, and how the tables change between refreshes, on recorded data."""

from __future__ import annotations

import copy

import pytest

from pitstop.tui import views
from pitstop.tui.app import PitstopApp, binding_ids
from pitstop.tui.config import load_config
from pitstop.tui.data import ClusterView
from tui_fake import T0, RecordedProvider, recorded_view
from tui_pilot import message, pilot_test, row_text, status, wait_for


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
    job = " ".join(c.plain for c in views.job_rows(view)["41"])
    assert "120/300" in job and "2.6500" in job and "15,234" in job and "1m30s" in job and "step 100" in job
    assert views.sparkline([3.0, 2.0, 1.0]) == "█▄▁"
    ckpt = views.checkpoint_rows(view)
    assert [k.split("#")[1] for k, c in ckpt.items() if "restart loads" in c[-1].plain] == ["100"]
    events = views.event_rows(view)
    assert len(events) == 5


def test_the_view_crosses_ssh_as_json_unchanged():
    view = recorded_view()
    again = ClusterView.from_dict(copy.deepcopy(view.to_dict()))
    assert again.to_dict() == view.to_dict()


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
async def test_a_refresh_updates_rows_by_key_and_keeps_the_cursor(monkeypatch):
    provider = RecordedProvider()
    app = PitstopApp(provider, interval=3600)
    async with app.run_test(size=(140, 32)) as pilot:
        await wait_for(pilot, lambda: app.refreshes >= 1, what="the first refresh")
        table = app.main.table("nodes")
        await pilot.press("down", "down")
        assert table.selected_key() == "node3"
        added = []
        monkeypatch.setattr(table, "add_row", lambda *a, **k: added.append(k.get("key")))
        provider.view.nodes[2].slurm_state = "idle"
        provider.view.nodes[2].reason = ""
        provider.view.taken_at = T0 + 2
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.refreshes >= 2, what="the second refresh")
        assert added == []  # no row rebuilt
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
