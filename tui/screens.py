"""The screens pushed over the views: confirmation, detail, job output, launch, help.

Each one that changes the cluster ends in a `ConfirmScreen`; each one that reads or
submits does so from a thread worker, so the screen never waits on Slurm or SSH.
"""

from __future__ import annotations

import shlex
import threading
from typing import TYPE_CHECKING, Any

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Log, Sparkline, Static

from pitstop.tui.providers import LaunchPreview, Launched, ProviderError

if TYPE_CHECKING:
    from pitstop.tui.app import PitstopApp

OUTPUT_POLL_S = 0.5
LOG_MAX_LINES = 100_000


def read_and_show(app, what: str, read, show) -> None:
    """In a thread worker: `read()` (the provider's call, drawn), then `show(result)` on the
    UI thread; a failure becomes a red line on screen, never a traceback."""
    try:
        shown = read()
    except ProviderError as exc:
        shown = Text(f"{what}: {exc}", style="bold red")
    except Exception as exc:  # a surprise: a line on screen, never a traceback
        shown = Text(f"{what}: {type(exc).__name__}: {exc}", style="bold red")
    try:
        app.call_from_thread(show, shown)
    except Exception:  # the app closed under us
        pass


class ConfirmScreen(ModalScreen[str | None]):
    """Yes or no, before anything that changes the cluster; optionally with a reason to
    edit. Dismisses with the reason ("" when none was asked) or None."""

    BINDINGS = [
        Binding("y", "confirm", "Yes", id="pitstop.confirm.yes"),
        Binding("n,escape", "cancel", "No", id="pitstop.confirm.no"),
    ]

    def __init__(self, question: str, reason: str | None = None, detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.reason = reason
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(Text(self.question, style="bold"), id="confirm-question")
            if self.detail:
                yield Static(Text(self.detail), id="confirm-detail")
            if self.reason is not None:
                yield Input(self.reason, id="confirm-reason", placeholder="reason (required)")
            keys = "enter: yes · esc: no" if self.reason is not None else "y: yes · n, esc or enter: no"
            yield Static(Text(keys, style="dim"), id="confirm-keys")
            with Horizontal(id="confirm-buttons"):
                yield Button("Yes", id="yes", variant="error")
                yield Button("No", id="no", variant="primary")

    def on_mount(self) -> None:
        if self.reason is not None:
            self.query_one("#confirm-reason", Input).focus()
        else:
            self.query_one("#no", Button).focus()

    def action_confirm(self) -> None:
        if self.reason is None:
            self.dismiss("")
            return
        reason = self.query_one("#confirm-reason", Input).value.strip()
        if not reason:
            self.notify("a reason is required", severity="error", markup=False)
            return
        self.dismiss(reason)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted, "#confirm-reason")
    def _reason_submitted(self) -> None:
        self.action_confirm()

    @on(Button.Pressed, "#yes")
    def _yes(self) -> None:
        self.action_confirm()

    @on(Button.Pressed, "#no")
    def _no(self) -> None:
        self.action_cancel()


class DetailScreen(Screen[None]):
    """Everything about one row: a node's devices and findings, a job's progress.

    A node's per-device readings are asked of the provider when the screen opens (one
    node, from a thread worker), so the screen is up at once and the table follows."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back", id="pitstop.back")]

    def __init__(self, title: str, body: Text | str, losses: list[float] | None = None,
                 devices_of: str | None = None, after: Text | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.losses = losses
        self.devices_of = devices_of
        self.after = after
        self.devices_loaded = False

    def compose(self) -> ComposeResult:
        yield Static(Text(self.title_text, style="bold reverse"), classes="screen-title")
        if self.losses:
            yield Static(Text(f"loss over the last {len(self.losses)} logged steps", style="dim"))
            yield Sparkline(self.losses, id="detail-losses")
        with VerticalScroll(id="detail-scroll"):
            yield Static(self.body, id="detail-body")
            if self.devices_of is not None:
                yield Static(Text("devices", style="bold underline"), classes="detail-heading")
                yield Static(Text("reading the agent's device readings…", style="dim"), id="detail-devices")
            if self.after is not None:
                yield Static(self.after, id="detail-after")
        yield Footer()

    def on_mount(self) -> None:
        if self.devices_of is not None:
            self._read_devices(self.devices_of)

    @work(thread=True, exclusive=True, group="devices", exit_on_error=False)
    def _read_devices(self, node: str) -> None:
        from pitstop.tui.devices import device_table

        read_and_show(self.app, "device readings", lambda: device_table(self.app.provider.devices(node)),
                      self._show_devices)

    def _show_devices(self, shown) -> None:
        if self.is_attached:
            self.query_one("#detail-devices", Static).update(shown)
            self.devices_loaded = True


class LogScreen(Screen[None]):
    """A job's output, followed as it grows. The Log widget renders only the lines in
    view, so a long output costs memory once and screen time not at all."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="pitstop.back"),
        Binding("f", "toggle_follow", "Follow", id="pitstop.log.follow"),
    ]

    def __init__(self, job_id: str, path: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.path = path
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Static(Text(f"job {self.job_id} · {self.path} · following", style="bold reverse"),
                     id="log-title", classes="screen-title")
        yield Log(max_lines=LOG_MAX_LINES, auto_scroll=True, id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Log).focus()
        self.follow_output()

    def on_unmount(self) -> None:
        self._stop.set()

    def action_toggle_follow(self) -> None:
        log = self.query_one(Log)
        log.auto_scroll = not log.auto_scroll
        state = "following" if log.auto_scroll else "paused"
        self.query_one("#log-title", Static).update(
            Text(f"job {self.job_id} · {self.path} · {state}", style="bold reverse"))
        if log.auto_scroll:
            log.scroll_end(animate=False)

    @work(thread=True, exclusive=True, group="log", exit_on_error=False)
    def follow_output(self) -> None:
        provider = self.app.provider
        offset, pending = 0, ""
        while not self._stop.is_set():
            try:
                text, offset = provider.read_output(self.path, offset)
            except ProviderError as exc:
                self._from_thread(self.notify, str(exc), severity="error", markup=False)
                self._stop.wait(OUTPUT_POLL_S * 4)
                continue
            if text:
                pending += text
                complete, _, pending = pending.rpartition("\n")
                if complete:
                    self._from_thread(self.query_one(Log).write_lines, complete.split("\n"))
                if len(text) == 1024 * 1024:
                    continue
            self._stop.wait(OUTPUT_POLL_S)

    def _from_thread(self, callback, *args, **kwargs) -> None:
        if self._stop.is_set():
            return
        try:
            self.app.call_from_thread(callback, *args, **kwargs)
        except Exception:  # the app closed under us: nothing left to draw on
            self._stop.set()


class LaunchScreen(Screen[Launched | None]):
    """Choose overrides, see the resolved config and the sbatch script, confirm, submit.
    Nothing is submitted until the preview of exactly these overrides passed."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="pitstop.back"),
        Binding("ctrl+s", "submit", "Submit", id="pitstop.launch.submit", priority=True),
    ]

    def __init__(self, recipe: str, overrides: str = "") -> None:
        super().__init__()
        self.recipe = recipe
        self.initial_overrides = overrides
        self.preview: LaunchPreview | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(f"launch {self.recipe}", style="bold reverse"), classes="screen-title")
        yield Static(Text("overrides (key=value, +key=value, ~key); enter: validate and preview; "
                          "ctrl+s: submit", style="dim"))
        yield Input(self.initial_overrides, id="overrides", placeholder="overrides, e.g. trainer.max_steps=100 cluster.nodes=2")
        yield Static("", id="launch-status")
        with VerticalScroll(id="launch-preview-scroll"):
            yield Static("", id="launch-preview")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#overrides", Input).focus()
        self.validate()

    def overrides(self) -> list[str]:
        return shlex.split(self.query_one("#overrides", Input).value)

    def _status(self, text: str, style: str = "") -> None:
        self.query_one("#launch-status", Static).update(Text(text, style=style))

    @on(Input.Submitted, "#overrides")
    def validate(self) -> None:
        try:
            overrides = self.overrides()
        except ValueError as exc:
            self._status(f"overrides: {exc}", "bold red")
            return
        self.preview = None
        self._status(f"validating {self.recipe} {' '.join(overrides)}…", "yellow")
        self._preview(overrides)

    @on(Input.Changed, "#overrides")
    def _changed(self) -> None:
        if self.preview is not None:
            self.preview = None
            self._status("changed: press enter to validate again", "yellow")

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def _preview(self, overrides: list[str]) -> None:
        try:
            preview = self.app.provider.preview(self.recipe, overrides)
        except ProviderError as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self._show_preview, preview)

    def _show_error(self, message: str) -> None:
        self._status(message, "bold red")
        self.query_one("#launch-preview", Static).update("")

    def _show_preview(self, preview: LaunchPreview) -> None:
        if preview.overrides != self._current_overrides():
            return
        self.preview = preview
        notes = "".join(f"\nwarning: {w}" for w in preview.warnings)
        self._status(f"valid · run dir {preview.run_dir} · ctrl+s to submit{notes}",
                     "bold yellow" if preview.warnings else "bold green")
        body = Text()
        body.append("# sbatch script\n", style="bold")
        body.append_text(Syntax(preview.script_text, "bash", theme="ansi_dark").highlight(preview.script_text))
        body.append("\n# resolved config (config.yaml)\n", style="bold")
        body.append(preview.config_text)
        self.query_one("#launch-preview", Static).update(body)

    def _current_overrides(self) -> list[str] | None:
        try:
            return self.overrides()
        except ValueError:
            return None

    def action_submit(self) -> None:
        app: PitstopApp = self.app  # type: ignore[assignment]
        if app.refuse("launch"):
            return
        if self.preview is None:
            self._status("validate first: press enter, check the preview, then ctrl+s", "bold red")
            return
        preview = self.preview
        question = f"Submit {preview.recipe} to Slurm?"
        detail = f"run dir {preview.run_dir}\noverrides: {' '.join(preview.overrides) or '(none)'}"

        def answered(result: str | None) -> None:
            if result is None:
                self._status("not submitted", "yellow")
                return
            self._status("submitting…", "yellow")
            self._submit(preview.recipe, preview.overrides)

        app.push_screen(ConfirmScreen(question, detail=detail), answered)

    @work(thread=True, exclusive=True, group="submit", exit_on_error=False)
    def _submit(self, recipe: str, overrides: list[str]) -> None:
        try:
            launched = self.app.provider.launch(recipe, overrides)
        except ProviderError as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self.dismiss, launched)


class HelpScreen(ModalScreen[None]):
    """Every binding of every screen, with the key it has now (after the keymap)."""

    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close", id="pitstop.help.close")]

    def __init__(self, rows: list[tuple[str, str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static(Text("pitstop · keys (remap by id in ~/.config/pitstop/tui.yaml: keymap:)",
                              style="bold"))
            yield DataTable(id="help-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("WHERE", "KEY", "WHAT", "ID")
        for row in self.rows:
            table.add_row(*row)
        table.focus()


def detail_text(fields: list[tuple[str, Any]], sections: list[tuple[str, list[str]]] = ()) -> Text:
    """Aligned `key  value` lines, then titled sections."""
    body = Text()
    width = max((len(k) for k, _ in fields), default=0)
    for key, value in fields:
        body.append(f"{key:<{width}}  ", style="bold")
        body.append(f"{'' if value is None else value}\n")
    for title, lines in sections:
        body.append(f"\n{title}\n", style="bold underline")
        for line in lines or ["(none)"]:
            body.append(f"  {line}\n")
    return body


class PlansScreen(Screen[None]):
    """`:plans` — every training plan's node-by-time picture (`pitstop.plans.picture`):
    running jobs to their projected end (=), reservations (#), the plan's segments (S), now
    (|), and the countdown to the next pause or start; read again every refresh interval
    from a thread worker."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back", id="pitstop.back")]

    def compose(self) -> ComposeResult:
        yield Static(Text("Plans", style="bold reverse"), classes="screen-title")
        with VerticalScroll(id="plans-scroll"):
            yield Static(Text("reading the training plans…", style="dim"), id="plans-body")
        yield Footer()

    def on_mount(self) -> None:
        self._read_plans()
        self.set_interval(max(1.0, self.app.interval), self._read_plans)

    @work(thread=True, exclusive=True, group="plans", exit_on_error=False)
    def _read_plans(self) -> None:
        width = max(20, (self.size.width or 100) - 14)
        read_and_show(self.app, "plans", lambda: plans_text(self.app.provider.plans(width)), self._show)

    def _show(self, shown: Text) -> None:
        if self.is_attached:
            self.query_one("#plans-body", Static).update(shown)


PLAN_MARK_STYLES = {"=": "cyan", "#": "magenta", "S": "bold green", "|": "bold yellow"}


def plans_text(pictures: list[dict[str, Any]]) -> Text:
    """The pictures as one Text: per plan a heading (name, state, countdown), then its lines
    with each mark coloured."""
    if not pictures:
        return Text("no training plans (`pitstop plans search`, then `plans book`)", style="dim")
    text = Text()
    for picture in pictures:
        text.append(f"{picture['name']}", style="bold")
        text.append(f"  {picture['label']}")
        if picture.get("countdown"):
            text.append(f"  · {picture['countdown']['text']}", style="bold yellow")
        text.append("\n")
        for line in picture["lines"]:
            for char in line:
                text.append(char, style=PLAN_MARK_STYLES.get(char, ""))
            text.append("\n")
        text.append("\n")
    text.append("= running job (to its projected end)   # reservation   S the plan's segments   | now",
                style="dim")
    return text
