"""The five views as data: their columns, and a ClusterView turned into keyed rows.

Kept apart from the widgets so that what a row says is a pure function of the view
(tested without a screen) and the table only diffs rows by key. Every cell carries the
value it sorts by, so STEP sorts as a number and TIME as a time.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from rich.text import Text

from pitstop.tui.data import ClusterView

SPARK_BARS = "▁▂▃▄▅▆▇█"
HEALTH_SEVERITY = {"OK": 0, "UNKNOWN": 1, "SUSPECT": 2, "CHECKING": 3, "REBOOTING": 4, "FENCED": 5}
HEALTH_STYLES = {"OK": "green", "SUSPECT": "yellow", "FENCED": "bold red",
                 "REBOOTING": "magenta", "CHECKING": "cyan", "UNKNOWN": "dim"}


class SortText(Text):
    """The Text a table holds, with the value its column sorts by."""

    sort_value: Any = (0, "")


class Cell:
    """One cell of a row as plain data: cheap to build for every row on every refresh;
    the table turns only the cells that changed into Text."""

    __slots__ = ("plain", "sort_value", "style")

    def __init__(self, text: str, sort_value: Any = None, style: str = "") -> None:
        self.plain = text
        self.style = style
        self.sort_value = (0, "") if sort_value is None and not text else \
            (1, sort_value if sort_value is not None else text)

    @property
    def signature(self) -> tuple[str, str]:
        return (self.plain, self.style)

    def text(self) -> SortText:
        rendered = SortText(self.plain, style=self.style, no_wrap=True, overflow="ellipsis")
        rendered.sort_value = self.sort_value
        return rendered


@dataclass(frozen=True)
class ViewSpec:
    """One view: its name, aliases on the command line, columns and default order."""

    name: str
    title: str
    aliases: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (column key, header)
    default_sort: tuple[str, bool] | None = None  # (column key, reverse)


VIEWS: dict[str, ViewSpec] = {spec.name: spec for spec in (
    ViewSpec("nodes", "Nodes", ("no", "node", "n"),
             (("node", "NODE"), ("slurm", "SLURM"), ("health", "PITSTOP"), ("accel", "ACCEL"),
              ("jobs", "JOBS"), ("worst", "WORST FINDING"), ("reason", "REASON"))),
    ViewSpec("jobs", "Jobs", ("jo", "job", "j"),
             (("job", "JOB"), ("name", "NAME"), ("user", "USER"), ("state", "STATE"),
              ("nodes", "NODES"), ("step", "STEP"), ("loss", "LOSS"), ("trend", "TREND"),
              ("tps", "TOK/S"), ("eta", "ETA"), ("restarts", "RESTARTS"), ("ckpt", "CKPT"))),
    ViewSpec("ckpt", "Checkpoints", ("checkpoints", "ck", "cp"),
             (("run", "RUN"), ("job", "JOB"), ("step", "STEP"), ("size", "SIZE"),
              ("complete", "COMPLETE"), ("age", "AGE"), ("loads", "RESTART LOADS"))),
    ViewSpec("recipes", "Recipes", ("rc", "re", "recipe"),
             (("name", "NAME"), ("task", "TASK"), ("hardware", "HARDWARE"),
              ("description", "DESCRIPTION")), ("name", False)),
    ViewSpec("events", "Events", ("ev", "event", "e"),
             (("time", "TIME"), ("node", "NODE"), ("kind", "KIND"), ("what", "WHAT")),
             ("time", True)),
)}


def resolve_view(word: str) -> str | None:
    """A view's name from what was typed after `:` (a name, an alias, or a unique prefix)."""
    word = word.strip().lower()
    for spec in VIEWS.values():
        if word == spec.name or word in spec.aliases:
            return spec.name
    matches = [s.name for s in VIEWS.values() if s.name.startswith(word)] if word else []
    return matches[0] if len(matches) == 1 else None


def command_words() -> list[str]:
    words = [s.name for s in VIEWS.values()]
    words += [a for s in VIEWS.values() for a in s.aliases if len(a) > 2]
    return words + ["help", "quit"]


# --- formatting -------------------------------------------------------------------------

def sparkline(values: list[float], width: int = 12) -> str:
    points = values[-width:]
    if not points:
        return ""
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    return "".join(SPARK_BARS[min(len(SPARK_BARS) - 1, int((v - low) / span * (len(SPARK_BARS) - 1)))]
                   for v in points)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def size(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def clock(epoch: float | None) -> str:
    """A time as UTC, the same on every screen the view reaches."""
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def short_run(run_dir: str) -> str:
    return run_dir.rstrip("/").rsplit("/", 1)[-1]


def finding_text(finding: dict[str, Any] | None) -> str:
    if not finding:
        return ""
    head = " ".join(str(p) for p in (finding.get("signal"), finding.get("code"), finding.get("device")) if p)
    message = finding.get("message") or ""
    return f"{head}: {message}" if message else head


def event_text(event: dict[str, Any]) -> str:
    kind = event.get("kind")
    if kind == "finding":
        return f"[{event.get('action_class', '')}] {finding_text(event.get('finding'))}"
    if kind == "transition":
        return (f"{event.get('from_health', '?')} → {event.get('to_health', '?')}"
                f"{' (' + event['fence_class'] + ')' if event.get('fence_class') else ''} "
                f"{event.get('reason', '')}").strip()
    if kind == "action":
        ok = "ok" if event.get("ok", True) else "FAILED"
        target = event.get("job_id") or ""
        return f"{event.get('action', '')} {target} {ok} {event.get('reason', '')}".replace("  ", " ").strip()
    if kind == "warning":
        return str(event.get("message", ""))
    if kind == "decision":
        return " ".join(str(event.get(k, "")) for k in ("action_class", "reason") if event.get(k))
    return json.dumps({k: v for k, v in event.items() if k not in {"time", "node", "kind"}})[:200]


# --- rows -------------------------------------------------------------------------------

Rows = dict[str, list[Cell]]


def node_rows(view: ClusterView) -> Rows:
    rows: Rows = {}
    for n in view.nodes:
        health = n.health + (f"({n.fence_class})" if n.fence_class else "")
        if n.health != "UNKNOWN" and n.agent_stale:
            health += "?"
        healthy = "-" if n.accelerators_healthy is None else str(n.accelerators_healthy)
        slurm_style = "red" if any(f in n.slurm_state for f in ("drain", "down", "fail")) else ""
        rows[n.node] = [
            Cell(n.node, _natural(n.node)), Cell(n.slurm_state, style=slurm_style),
            Cell(health, (HEALTH_SEVERITY.get(n.health, 1), health), style=HEALTH_STYLES.get(n.health, "")),
            Cell(f"{healthy}/{n.accelerators_total}", n.accelerators_healthy or 0),
            Cell(",".join(n.jobs)), Cell(finding_text(n.worst_finding)),
            Cell(n.reason, style="bold" if n.reason_is_pitstop else "")]
    return rows


def job_rows(view: ClusterView) -> Rows:
    rows: Rows = {}
    for row in view.jobs:
        job, p = row.job, row.progress
        step = ""
        if p is not None:
            step = f"{p.step}/{p.max_steps}" if p.max_steps else str(p.step)
        state_style = {"RUNNING": "green", "PENDING": "yellow", "FAILED": "red",
                       "CANCELLED": "dim", "COMPLETED": "blue"}.get(job.state, "")
        rows[job.job_id] = [
            Cell(job.job_id, _natural(job.job_id)), Cell(job.name), Cell(job.user),
            Cell(job.state, style=state_style), Cell(",".join(job.nodes) or job.reason),
            Cell(step, p.step if p else None),
            Cell(f"{p.loss:.4f}" if p and p.loss is not None else "", p.loss if p else None),
            Cell(sparkline(p.losses) if p else "", style="cyan"),
            Cell(f"{p.tokens_per_s:,.0f}" if p and p.tokens_per_s else "", p.tokens_per_s if p else None),
            Cell(duration(p.eta_s) if p and job.running else "", p.eta_s if p else None),
            Cell(str(max(job.restart_count, p.restarts if p else 0)),
                 max(job.restart_count, p.restarts if p else 0)),
            Cell("" if not p or p.last_checkpoint is None else f"step {p.last_checkpoint}",
                 p.last_checkpoint if p else None)]
    return rows


def checkpoint_rows(view: ClusterView) -> Rows:
    rows: Rows = {}
    for c in view.checkpoints:
        rows[f"{c.run_dir}#{c.step}"] = [
            Cell(short_run(c.run_dir)), Cell(c.job_id, _natural(c.job_id)), Cell(str(c.step), c.step),
            Cell(size(c.size_bytes), c.size_bytes),
            Cell("yes" if c.complete else "no (partial)", c.complete, style="" if c.complete else "yellow"),
            Cell(duration(view.taken_at - c.mtime), view.taken_at - c.mtime),
            Cell("★ restart loads this" if c.restart_target else "", c.restart_target, style="bold green")]
    return rows


def recipe_rows(recipes: list[dict[str, Any]]) -> Rows:
    rows: Rows = {}
    for r in recipes:
        description = r.get("description") or (f"does not compose: {r['error']}" if r.get("error") else "")
        rows[r["name"]] = [Cell(r["name"]), Cell(r.get("task", "")), Cell(r.get("hardware", "")),
                           Cell(description, style="red" if r.get("error") else "")]
    return rows


def event_rows(view: ClusterView) -> Rows:
    rows: Rows = {}
    for event in view.events:
        key = f"{event.get('time')}|{event.get('node')}|{event.get('kind')}|{event_text(event)}"
        kind = str(event.get("kind", ""))
        rows[key] = [Cell(clock(event.get("time")), float(event.get("time") or 0)),
                     Cell(str(event.get("node", "")), _natural(str(event.get("node", "")))),
                     Cell(kind, style={"action": "bold", "warning": "red", "finding": "yellow"}.get(kind, "")),
                     Cell(event_text(event))]
    return rows


ROW_BUILDERS: dict[str, Callable[[ClusterView], Rows]] = {
    "nodes": node_rows, "jobs": job_rows, "ckpt": checkpoint_rows, "events": event_rows}


def _natural(text: str) -> tuple:
    """node10 after node9; job 100 after job 99."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


# --- filters ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RowFilter:
    """`/pattern`: rows whose text matches; `/!pattern`: rows whose text does not."""

    text: str
    pattern: re.Pattern | None
    negate: bool

    def matches(self, cells: list[Cell]) -> bool:
        if self.pattern is None:
            return True
        found = bool(self.pattern.search(" ".join(c.plain for c in cells)))
        return found != self.negate


def parse_filter(text: str) -> RowFilter:
    """A filter from what was typed after `/`; raises ValueError with the regex's complaint."""
    text = text.strip()
    negate = text.startswith("!")
    body = text[1:] if negate else text
    if not body:
        return RowFilter("", None, False)
    try:
        pattern = re.compile(body, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"bad filter {body!r}: {exc}") from None
    return RowFilter(text, pattern, negate)
