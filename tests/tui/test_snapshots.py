"""What each view looks like, on a recorded cluster (pytest-textual-snapshot).

Each snapshot reads like a user's session: start, wait for the first refresh, press keys.
`pytest tests/tui --snapshot-update` rewrites them after a deliberate change; look at the
report before accepting one.
"""

from __future__ import annotations

from textual.widgets import Input

from pitstop.tui.app import PitstopApp
from tui_fake import RecordedProvider
from tui_pilot import wait_for

SIZE = (140, 32)


def app(readonly: bool = False, fail_after: int | None = None) -> PitstopApp:
    return PitstopApp(RecordedProvider(fail_after=fail_after), readonly=readonly, interval=3600)


def session(*keys: str, until=None):
    """A run_before: wait for the first refresh and the recipes, press `keys`, wait for
    `until(app)`, stop the cursors blinking so the picture is the same every time."""

    async def run_before(pilot) -> None:
        a = pilot.app
        await wait_for(pilot, lambda: a.refreshes >= 1 and a.recipes, 10, what="the first refresh")
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        if until is not None:
            await wait_for(pilot, lambda: until(a), 10, what="the screen to settle")
        for widget in a.screen.query(Input):
            widget.cursor_blink = False
        await pilot.pause()

    return run_before


def test_nodes_view(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session())


def test_jobs_view(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session("colon", "j", "o", "b", "s", "enter"))


def test_checkpoints_view(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session("colon", "c", "k", "enter"))


def test_recipes_view(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session("colon", "r", "c", "enter"))


def test_events_view_newest_first(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session("colon", "e", "v", "enter"))


def test_command_line_completes(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session("colon", "r", "e", "c"))


def test_filter_negated(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE,
                        run_before=session("slash", "exclamation_mark", "d", "r", "a", "i", "n", "enter"))


def test_sorted_by_the_third_column_reversed(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session("s", "s", "s", "S"))


def test_help_lists_every_binding(snap_compare):
    assert snap_compare(app(), terminal_size=(140, 45), run_before=session("question_mark"))


def test_drain_confirmation(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session("down", "down", "d"))


def test_node_detail_with_its_devices(snap_compare):
    assert snap_compare(app(), terminal_size=(150, 40), run_before=session(
        "down", "enter", until=lambda a: getattr(a.screen, "devices_loaded", False)))


def test_job_detail_with_the_loss_sparkline(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE,
                        run_before=session("colon", "j", "o", "enter", "enter"))


def test_job_output_followed(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session(
        "colon", "j", "o", "enter", "l", until=lambda a: a.screen.query("Log") and
        a.screen.query_one("Log").line_count >= 200))


def test_launch_preview(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=session(
        "colon", "r", "c", "enter", "down", "L",
        until=lambda a: "valid" in str(a.screen.query_one("#launch-status").render())))


def test_launch_refuses_a_bad_override(snap_compare):
    keys = ["colon", "r", "c", "enter", "down", "L", *"trainer.max_stepz=3", "enter"]
    assert snap_compare(app(), terminal_size=SIZE, run_before=session(
        *keys, until=lambda a: "max_stepz" in str(a.screen.query_one("#launch-status").render())))


def test_readonly_refuses_drain(snap_compare):
    assert snap_compare(app(readonly=True), terminal_size=SIZE, run_before=session("down", "d"))


def test_a_failed_refresh_keeps_the_rows_and_marks_them_stale(snap_compare):
    assert snap_compare(app(fail_after=1), terminal_size=SIZE, run_before=session(
        "ctrl+r", until=lambda a: a.last_error))
