"""The pitstop TUI: five views of one cluster, driven from the keyboard in k9s's manner.

The app holds a `Provider` and the last good `ClusterView`. A thread worker fetches the
next view, the UI thread applies it (rows diffed by key, never rebuilt), and only then is
the next poll scheduled, so a slow cluster slows the refresh, never the keys. A failed
refresh keeps the last rows on screen, marked stale, with the error beside them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import ContentSwitcher, Footer, Input, Static

from pitstop.tui import details, screens
from pitstop.tui import views as v
from pitstop.tui.collector import Collector
from pitstop.tui.data import ClusterView
from pitstop.tui.providers import Launched, Provider, ProviderError, operator_reason
from pitstop.tui.table import KeyedTable
from pitstop.tui.widgets import DataView, PromptInput

DEFAULT_INTERVAL_S = 2.0
PLANS_WORDS = frozenset({"plans", "plan", "pl"})  # `:plans` opens the Plans screen
CHANGING_ACTIONS = frozenset({"drain", "resume", "requeue", "cancel_job", "launch"})


class MainScreen(Screen[None]):
    """The views, the status line, the prompt and the keys that act on rows."""

    BINDINGS = [
        # Priority: the app runs them as the key arrives, so keys typed right after
        # (`:jobs` at full speed) already find the prompt focused.
        Binding("colon", "command", "View", id="pitstop.command", priority=True),
        Binding("slash", "filter", "Filter", id="pitstop.filter", priority=True),
        Binding("question_mark", "help", "Help", id="pitstop.help"),
        Binding("escape", "back", "Back", id="pitstop.back", show=False),
        Binding("enter", "detail", "Detail", id="pitstop.detail", show=False),
        Binding("l", "log", "Logs", id="pitstop.log"),
        Binding("d", "drain", "Drain", id="pitstop.drain"),
        Binding("r", "resume", "Resume", id="pitstop.resume"),
        Binding("R", "requeue", "Requeue", id="pitstop.requeue"),
        Binding("c", "cancel_job", "Cancel", id="pitstop.cancel"),
        Binding("L", "launch", "Launch", id="pitstop.launch"),
        Binding("s", "sort", "Sort", id="pitstop.sort"),
        Binding("S", "sort_reverse", "Reverse", id="pitstop.sort_reverse", show=False),
        Binding("ctrl+r", "refresh_now", "Refresh", id="pitstop.refresh", show=False),
        Binding("q", "app.quit", "Quit", id="pitstop.quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.view_name = "nodes"
        self.history: list[str] = []
        self.prompt_mode: str | None = None
        self.standing: tuple[str, bool] = ("", False)  # the message line when there is nothing new to say

    def compose(self) -> ComposeResult:
        yield Static("", id="status")
        with ContentSwitcher(initial="view-nodes", id="views"):
            for spec in v.VIEWS.values():
                yield DataView(spec)
        yield Static("", id="message")
        yield PromptInput(id="prompt", suggester=SuggestFromList(v.command_words(), case_sensitive=False))
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).display = False
        self.table().focus()
        if self.pitstop.readonly:
            self._hide_changing_keys()

    def _hide_changing_keys(self) -> None:
        """Read-only: the keys that change the cluster leave the footer (pressed anyway,
        they say why they do nothing)."""
        try:
            by_key = self._bindings.key_to_bindings
        except AttributeError:  # another Textual: the footer keeps them, the refusal stays
            return
        for key, bindings in by_key.items():
            by_key[key] = [replace(b, show=False) if b.action in CHANGING_ACTIONS else b for b in bindings]
        self.refresh_bindings()

    # --- helpers ----------------------------------------------------------------------

    @property
    def pitstop(self) -> "PitstopApp":
        return self.app  # type: ignore[return-value]

    def table(self, name: str | None = None) -> DataView:
        return self.query_one(f"#view-{name or self.view_name}", DataView)

    def switch_to(self, name: str, remember: bool = True) -> None:
        if name != self.view_name and remember:
            self.history.append(self.view_name)
        self.view_name = name
        self.pitstop.show_view(name)
        self.query_one(ContentSwitcher).current = f"view-{name}"
        self.set_focus(self.table())
        self.pitstop.update_status()

    def say(self, text: str, error: bool = False) -> None:
        """A line on the message bar; an empty one brings back the standing message (the
        demo's last word, say, that a change of view must not wipe)."""
        if not text:
            text, error = self.standing
        self.query_one("#message", Static).update(Text(text, style="bold red" if error else ""))

    def selected(self, view: str, what: str) -> str | None:
        if self.view_name != view:
            self.say(f"{what}: switch to :{view} and select a row first", error=True)
            return None
        key = self.table().selected_key()
        if key is None:
            self.say(f"{what}: no row selected", error=True)
        return key

    # --- prompt -----------------------------------------------------------------------

    def _open_prompt(self, mode: str, placeholder: str, value: str = "") -> None:
        prompt = self.query_one("#prompt", PromptInput)
        self.prompt_mode = mode
        prompt.placeholder = placeholder
        prompt.suggester = (SuggestFromList(v.command_words(), case_sensitive=False)
                            if mode == "command" else None)
        prompt.value = value
        prompt.display = True
        prompt.border_title = ":" if mode == "command" else "/"
        self.set_focus(prompt)  # now, not later: the keys typed next belong to the prompt

    def _close_prompt(self) -> None:
        prompt = self.query_one("#prompt", PromptInput)
        prompt.display = False
        self.prompt_mode = None
        self.set_focus(self.table())

    def _typed_into_prompt(self, character: str) -> bool:
        """Inside the prompt, `:` and `/` are characters, not commands."""
        if self.prompt_mode is None:
            return False
        self.query_one("#prompt", PromptInput).insert_text_at_cursor(character)
        return True

    def action_command(self) -> None:
        if not self._typed_into_prompt(":"):
            self._open_prompt("command", "nodes · jobs · ckpt · recipes · events (tab completes)")

    def action_filter(self) -> None:
        if not self._typed_into_prompt("/"):
            self._open_prompt("filter", "regular expression; !pattern hides matches",
                              self.table().row_filter.text)

    @on(Input.Submitted, "#prompt")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        # The prompt's value now, not the event's: keys typed fast (a paste, tmux) reach
        # the Input's queue before Enter's binding posts Submitted with the older value.
        mode, text = self.prompt_mode, self.query_one("#prompt", PromptInput).value.strip()
        self._close_prompt()
        if mode == "command":
            self.run_command(text)
        elif mode == "filter":
            try:
                row_filter = v.parse_filter(text)
            except ValueError as exc:
                self.say(str(exc), error=True)
                return
            self.table().set_filter(row_filter)
            self.say(f"filter /{text}/" if text else "filter cleared")

    def run_command(self, text: str) -> None:
        word = text.lstrip(":").strip()
        if not word:
            return
        if word in {"q", "quit", "q!"}:
            self.app.exit()
            return
        if word in {"help", "h"}:
            self.action_help()
            return
        if word in PLANS_WORDS:
            self.app.push_screen(screens.PlansScreen())
            self.say("")
            return
        name = v.resolve_view(word)
        if name is None:
            self.say(f"unknown view :{word} (nodes, jobs, ckpt, recipes, events, plans)", error=True)
            return
        self.switch_to(name)
        self.say("")

    def action_back(self) -> None:
        if self.prompt_mode:
            self._close_prompt()
        elif self.table().row_filter.text:
            self.table().set_filter(v.RowFilter("", None, False))
            self.say("filter cleared")
        elif self.history:
            self.switch_to(self.history.pop(), remember=False)

    def action_help(self) -> None:
        self.app.push_screen(screens.HelpScreen(self.pitstop.binding_rows()))

    def action_sort(self) -> None:
        self.table().cycle_sort()

    def action_sort_reverse(self) -> None:
        self.table().cycle_sort(reverse_only=True)

    def action_refresh_now(self) -> None:
        self.pitstop.start_refresh()

    # --- detail and output ------------------------------------------------------------

    @on(KeyedTable.RowSelected)
    def _row_selected(self, event: KeyedTable.RowSelected) -> None:
        event.stop()
        self.action_detail()

    def action_detail(self) -> None:
        key = self.table().selected_key()
        if key is None:
            return
        screen = self.pitstop.detail_screen(self.view_name, key)
        if screen is not None:
            self.app.push_screen(screen)

    def action_log(self) -> None:
        job_id = self.selected("jobs", "logs")
        if job_id is None:
            return
        row = self.pitstop.view.job(job_id) if self.pitstop.view else None
        if row is None or not row.job.stdout:
            self.say(f"job {job_id} has no output file that Slurm knows", error=True)
            return
        self.app.push_screen(screens.LogScreen(job_id, row.job.stdout))

    # --- actions that change the cluster -----------------------------------------------

    def action_drain(self) -> None:
        if self.pitstop.refuse("drain"):
            return
        node = self.selected("nodes", "drain")
        if node is None:
            return
        jobs = self.pitstop.view.node(node).jobs if self.pitstop.view and self.pitstop.view.node(node) else []
        detail = f"its jobs keep running until they end: {', '.join(jobs)}" if jobs else "no job runs on it"
        self._confirm(f"Drain {node}? Slurm places no new work on it.", "drain", node,
                      reason=operator_reason("drained"), detail=detail)

    def action_resume(self) -> None:
        if self.pitstop.refuse("resume"):
            return
        node = self.selected("nodes", "resume")
        if node is None:
            return
        row = self.pitstop.view.node(node) if self.pitstop.view else None
        detail = ""
        if row is not None and row.reason and not row.reason_is_pitstop:
            detail = f"an operator drained it: {row.reason}"
        elif row is not None and row.reason:
            detail = f"pitstop fenced it: {row.reason}"
        self._confirm(f"Resume {node}? Slurm places work on it again.", "resume", node, detail=detail)

    def action_requeue(self) -> None:
        if self.pitstop.refuse("requeue"):
            return
        job_id = self.selected("jobs", "requeue")
        if job_id is not None:
            self._confirm(f"Requeue job {job_id}? It stops now and restarts from its last checkpoint.",
                          "requeue", job_id)

    def action_cancel_job(self) -> None:
        if self.pitstop.refuse("cancel"):
            return
        job_id = self.selected("jobs", "cancel")
        if job_id is not None:
            self._confirm(f"Cancel job {job_id}? It ends and is not requeued.", "cancel", job_id)

    def _confirm(self, question: str, action: str, target: str, reason: str | None = None,
                 detail: str = "") -> None:
        def answered(result: str | None) -> None:
            if result is None:
                self.say(f"{action} {target}: not done")
                return
            self.say(f"{action} {target}…")
            self.pitstop.perform_action(action, target, result)

        self.app.push_screen(screens.ConfirmScreen(question, reason=reason, detail=detail), answered)

    def action_launch(self) -> None:
        if self.pitstop.refuse("launch"):
            return
        recipe = self.selected("recipes", "launch")
        if recipe is None:
            return

        def launched(result: Launched | None) -> None:
            if result is None:
                self.say(f"launch {recipe}: not submitted")
                return
            self.say(f"submitted job {result.job_id} · run dir {result.run_dir}")
            self.switch_to("jobs")
            self.pitstop.start_refresh()

        self.app.push_screen(screens.LaunchScreen(recipe), launched)


class PitstopApp(App[None]):
    """`pitstop tui`: the provider, the refresh loop, and what the views show."""

    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "pitstop"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, provider: Provider, readonly: bool = False,
                 interval: float = DEFAULT_INTERVAL_S, keymap: dict[str, str] | None = None) -> None:
        super().__init__()
        self.provider = provider
        self.readonly = readonly
        self.interval = interval
        self.user_keymap = dict(keymap or {})
        self.view: ClusterView | None = None
        self.recipes: list[dict[str, Any]] = []
        self.last_good_at: float | None = None
        self.last_error: str = ""
        self.error_at: float | None = None
        self.refreshes = 0
        self._status_rows = 0
        self.collector = Collector()
        self.row_memos = {name: v.RowMemo(source) for name, source in v.ROW_SOURCES.items()}
        self._next_refresh = None

    def on_mount(self) -> None:
        if self.user_keymap:
            self.set_keymap(self.user_keymap)
        self.push_screen(MainScreen())
        self.update_status()
        self.start_refresh()
        self.load_recipes()

    @property
    def main(self) -> MainScreen:
        return next(s for s in self.screen_stack if isinstance(s, MainScreen))

    # --- refresh ----------------------------------------------------------------------

    def start_refresh(self) -> None:
        if self._next_refresh is not None:
            self._next_refresh.stop()
            self._next_refresh = None
        self.refresh_view()

    @work(thread=True, exclusive=True, group="refresh", exit_on_error=False)
    def refresh_view(self) -> None:
        try:
            view = self.provider.fetch()
        except ProviderError as exc:
            self._from_thread(self.refresh_failed, str(exc))
        except Exception as exc:  # a bug or a surprise: a message, never a traceback
            self._from_thread(self.refresh_failed, f"refresh failed: {type(exc).__name__}: {exc}")
        else:
            self._from_thread(self.apply_view, view)
        self._from_thread(self._schedule_refresh)

    def _from_thread(self, callback, *args) -> None:
        try:
            self.call_from_thread(callback, *args)
        except Exception:  # the app is closing
            pass

    def _schedule_refresh(self) -> None:
        if self._next_refresh is not None:
            self._next_refresh.stop()
        self._next_refresh = self.set_timer(self.interval, self.start_refresh)

    def apply_view(self, view: ClusterView) -> None:
        self.view = view
        self.last_good_at = view.taken_at
        self.last_error, self.error_at = "", None
        self.refreshes += 1
        self.show_view(self.main.view_name)
        self.update_status()
        self.call_after_refresh(self._catch_up, [n for n in self.row_memos if n != self.main.view_name])

    def show_view(self, name: str) -> None:
        """Bring the table of view `name` up to date."""
        memo = self.row_memos.get(name)
        if memo is not None and self.view is not None:
            self.main.table(name).show(memo.rows(self.view))

    def _catch_up(self, hidden: list[str]) -> None:
        """Once a refresh is on screen, the hidden views catch up, one per turn of the
        message loop so a key pressed meanwhile goes first; then the garbage is settled.
        A `:jobs` a moment later then finds its table already built."""
        if hidden:
            name = hidden.pop(0)
            try:
                if name != self.main.view_name:
                    self.show_view(name)
            except (NoMatches, StopIteration):  # the app is closing: nothing left to catch up
                return
            self.call_later(self._catch_up, hidden)
        else:
            self.collector.settle()

    def refresh_failed(self, message: str) -> None:
        self.last_error, self.error_at = message, time.time()
        self.update_status()

    @work(thread=True, exclusive=True, group="recipes", exit_on_error=False)
    def load_recipes(self) -> None:
        try:
            found = self.provider.recipes()
        except ProviderError as exc:
            self._from_thread(self.notify, f"recipes: {exc}", severity="error", markup=False)
            return
        except Exception as exc:
            self._from_thread(self.notify, f"recipes: {type(exc).__name__}: {exc}", severity="error",
                              markup=False)
            return
        self._from_thread(self._show_recipes, found)

    def _show_recipes(self, found: list[dict[str, Any]]) -> None:
        self.recipes = found
        self.main.table("recipes").show(v.recipe_rows(found))

    def update_status(self) -> None:
        try:
            status = self.main.query_one("#status", Static)
        except Exception:
            return
        line = Text()
        line.append(" pitstop ", style="bold reverse")
        line.append(f" {self.provider.label} ")
        if self.readonly:
            line.append(" READ-ONLY ", style="bold black on yellow")
        line.append(f" :{self.main.view_name} ")
        if self.view is not None:
            fenced = sum(1 for n in self.view.nodes if n.health == "FENCED" or n.reason)
            line.append(f"· {len(self.view.nodes)} nodes, {fenced} unavailable · {len(self.view.jobs)} jobs ")
        if self.last_good_at is None:
            line.append("· connecting… ", style="yellow")
        elif self.last_error:
            line.append(f"· STALE, last good refresh {v.clock(self.last_good_at)} UTC ", style="bold yellow")
        else:
            line.append(f"· refreshed {v.clock(self.last_good_at)} UTC ", style="dim")
        if self.last_error:
            line.append(f"· error: {self.last_error}", style="bold red")
        # A new layout (the whole screen's) only when the line may wrap to another height:
        # the clock changing every refresh must not cost one.
        rows = 1 + line.cell_len // max(1, status.size.width or 1)
        status.update(line, layout=rows != self._status_rows)
        self._status_rows = rows

    # --- actions ----------------------------------------------------------------------

    def refuse(self, action: str) -> bool:
        """True (and says so) when the app is read-only."""
        if self.readonly:
            self.main.say(f"read-only: {action} is disabled (started with --readonly)", error=True)
            self.notify(f"read-only: {action} refused", severity="warning", markup=False)
        return self.readonly

    @work(thread=True, group="actions", exit_on_error=False)
    def perform_action(self, action: str, target: str, reason: str) -> None:
        try:
            if action == "drain":
                self.provider.drain(target, reason)
                done = f"{target} drained: {reason}"
            elif action == "resume":
                self.provider.resume(target)
                done = f"{target} resumed"
            elif action == "requeue":
                self.provider.requeue(target)
                done = f"job {target} requeued"
            elif action == "cancel":
                self.provider.cancel(target)
                done = f"job {target} cancelled"
            else:
                raise ProviderError(f"unknown action {action}")
        except ProviderError as exc:
            self._from_thread(self._said, f"{action} {target} failed: {exc}", True)
            return
        except Exception as exc:
            self._from_thread(self._said, f"{action} {target} failed: {type(exc).__name__}: {exc}", True)
            return
        self._from_thread(self._said, done, False)
        self._from_thread(self.start_refresh)

    def _said(self, text: str, error: bool) -> None:
        self.main.say(text, error=error)
        self.notify(text, severity="error" if error else "information", markup=False)

    # --- detail -----------------------------------------------------------------------

    def detail_screen(self, view_name: str, key: str) -> Screen | None:
        return details.detail_screen(self.view, self.recipes, view_name, key)

    # --- help -------------------------------------------------------------------------

    def binding_rows(self) -> list[tuple[str, str, str, str]]:
        """Every binding with an id, on every screen, with its key after the keymap."""
        rows = []
        keymap = self._keymap
        for where, cls in BINDING_PLACES:
            for binding in cls.BINDINGS:
                if not isinstance(binding, Binding):
                    continue
                keys = keymap.get(binding.id, binding.key) if binding.id else binding.key
                rows.append((where, _key_label(keys), binding.description or binding.action, binding.id or ""))
        return rows


BINDING_PLACES: tuple[tuple[str, type], ...] = (
    ("views", MainScreen), ("prompt", PromptInput), ("confirm", screens.ConfirmScreen),
    ("detail", screens.DetailScreen), ("output", screens.LogScreen),
    ("launch", screens.LaunchScreen), ("help", screens.HelpScreen))

_KEY_NAMES = {"colon": ":", "slash": "/", "question_mark": "?", "escape": "esc", "enter": "enter"}


def _key_label(keys: str) -> str:
    return ", ".join(_KEY_NAMES.get(k.strip(), k.strip()) for k in keys.split(","))


def binding_ids() -> set[str]:
    """Every binding id a keymap may name."""
    return {b.id for _, cls in BINDING_PLACES for b in cls.BINDINGS if isinstance(b, Binding) and b.id}
