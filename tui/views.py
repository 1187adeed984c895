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
from typing import Any, Callable, Iterable

from pitstop.health_view import NodeHealth
from pitstop.tui.data import CheckpointRow, ClusterView, JobRow

SPARK_BARS = "▁▂▃▄▅▆▇█"
HEALTH_SEVERITY = {"OK": 0, "UNKNOWN": 1, "SUSPECT": 2, "CHECKING": 3, "REBOOTING": 4, "FENCED": 5}
HEALTH_STYLES = {"OK": "green", "SUSPECT": "yellow", "FENCED": "bold red",
                 "REBOOTING": "magenta", "CHECKING": "cyan", "UNKNOWN": "dim"}


class Cell:
    """One cell of a row as plain data: its text, the value its column sorts by, and its
    style. The table draws it as is; nothing is rendered until the row is on screen."""

    __slots__ = ("plain", "sort_value", "style")

    def __init__(self, text: str, sort_value: Any = None, style: str = "") -> None:
        self.plain = text
        self.style = style
        self.sort_value = (0, "") if sort_value is None and not text else \
            (1, sort_value if sort_value is not None else text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and (self.plain, self.style, self.sort_value) == \
            (other.plain, other.style, other.sort_value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Cell({self.plain!r})"


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
    return words + ["plans", "help", "quit"]


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


def node_cells(n: NodeHealth) -> list[Cell]:
    health = n.health + (f"({n.fence_class})" if n.fence_class else "")
    if n.health != "UNKNOWN" and n.agent_stale:
        health += "?"
    healthy = "-" if n.accelerators_healthy is None else str(n.accelerators_healthy)
    slurm_style = "red" if any(f in n.slurm_state for f in ("drain", "down", "fail")) else ""
    return [Cell(n.node, _natural(n.node)), Cell(n.slurm_state, style=slurm_style),
            Cell(health, (HEALTH_SEVERITY.get(n.health, 1), health), style=HEALTH_STYLES.get(n.health, "")),
            Cell(f"{healthy}/{n.accelerators_total}", n.accelerators_healthy or 0),
            Cell(",".join(n.jobs)), Cell(finding_text(n.worst_finding)),
            Cell(n.reason, style="bold" if n.reason_is_pitstop else "")]


def job_cells(row: JobRow) -> list[Cell]:
    job, p = row.job, row.progress
    step = ""
    if p is not None:
        step = f"{p.step}/{p.max_steps}" if p.max_steps else str(p.step)
    state_style = {"RUNNING": "green", "PENDING": "yellow", "FAILED": "red",
                   "CANCELLED": "dim", "COMPLETED": "blue"}.get(job.state, "")
    restarts = max(job.restart_count, p.restarts if p else 0)
    return [Cell(job.job_id, _natural(job.job_id)), Cell(job.name), Cell(job.user),
            Cell(job.state, style=state_style), Cell(",".join(job.nodes) or job.reason),
            Cell(step, p.step if p else None),
            Cell(f"{p.loss:.4f}" if p and p.loss is not None else "", p.loss if p else None),
            Cell(sparkline(p.losses) if p else "", style="cyan"),
            Cell(f"{p.tokens_per_s:,.0f}" if p and p.tokens_per_s else "", p.tokens_per_s if p else None),
            Cell(duration(p.eta_s) if p and job.running else "", p.eta_s if p else None),
            Cell(str(restarts), restarts),
            Cell("" if not p or p.last_checkpoint is None else f"step {p.last_checkpoint}",
                 p.last_checkpoint if p else None)]


def checkpoint_cells(item: tuple[CheckpointRow, float]) -> list[Cell]:
    c, taken_at = item
    return [Cell(short_run(c.run_dir)), Cell(c.job_id, _natural(c.job_id)), Cell(str(c.step), c.step),
            Cell(size(c.size_bytes), c.size_bytes),
            Cell("yes" if c.complete else "no (partial)", c.complete, style="" if c.complete else "yellow"),
            Cell(duration(taken_at - c.mtime), taken_at - c.mtime),
            Cell("★ restart loads this" if c.restart_target else "", c.restart_target, style="bold green")]


def event_cells(event: dict[str, Any]) -> list[Cell]:
    kind = str(event.get("kind", ""))
    return [Cell(clock(event.get("time")), float(event.get("time") or 0)),
            Cell(str(event.get("node", "")), _natural(str(event.get("node", "")))),
            Cell(kind, style={"action": "bold", "warning": "red", "finding": "yellow"}.get(kind, "")),
            Cell(event_text(event))]


def event_key(event: dict[str, Any]) -> str:
    return f"{event.get('time')}|{event.get('node')}|{event.get('kind')}|{event_text(event)}"


def checkpoint_key(c: CheckpointRow) -> str:
    return f"{c.run_dir}#{c.step}"


@dataclass(frozen=True)
class RowSource:
    """Where a view's rows come from: the items of a ClusterView, each item's key, and
    the cells one item shows."""

    items: Callable[[ClusterView], Iterable[Any]]
    key: Callable[[Any], str]
    cells: Callable[[Any], list[Cell]]
    shown: Callable[[Any], Any] = lambda item: item  # what of the item the row shows


def node_shown(n: NodeHealth) -> tuple:
    """A node's row shows these, not its agent's heartbeat time (which moves every save)."""
    return (n.node, n.slurm_state, n.health, n.fence_class, n.agent_stale, n.accelerators_healthy,
            n.accelerators_total, n.jobs, n.worst_finding, n.reason, n.reason_is_pitstop)


ROW_SOURCES: dict[str, RowSource] = {
    "nodes": RowSource(lambda view: view.nodes, lambda n: n.node, node_cells, node_shown),
    "jobs": RowSource(lambda view: view.jobs, lambda j: j.job.job_id, job_cells),
    "ckpt": RowSource(lambda view: [(c, view.taken_at) for c in view.checkpoints],
                      lambda item: checkpoint_key(item[0]), checkpoint_cells),
    "events": RowSource(lambda view: view.events, event_key, event_cells),
}


class RowMemo:
    """One view's rows from the last refresh, by key, with the item each was built from.

    The same item as last time (the wire decoder hands back the very object for a line
    it has seen), or one that shows the same (a node whose agent only saved again), gives
    back last time's cells, the very same list: an unchanged row is neither formatted
    again nor compared cell by cell by the table."""

    def __init__(self, source: RowSource) -> None:
        self.source = source
        self._built: dict[str, tuple[Any, Any, list[Cell]]] = {}  # key -> (item, shown, cells)
        self.formatted = 0  # rows the last call had to format

    def rows(self, view: ClusterView) -> Rows:
        source, before, built, rows, formatted = self.source, self._built, {}, {}, 0
        key_of, shown_of = source.key, source.shown
        for item in source.items(view):
            key = key_of(item)
            last = before.get(key)
            if last is not None and last[0] is item:
                built[key] = last
                rows[key] = last[2]
                continue
            shown = shown_of(item)
            if last is not None and last[1] == shown:
                cells = last[2]
            else:
                cells = source.cells(item)
                formatted += 1
                if last is not None and cells == last[2]:  # changed where the row does not show
                    cells = last[2]
            built[key] = (item, shown, cells)
            rows[key] = cells
        self._built, self.formatted = built, formatted
        return rows


def view_rows(name: str, view: ClusterView) -> Rows:
    """The rows of view `name`, built afresh (the app keeps a RowMemo per view instead)."""
    return RowMemo(ROW_SOURCES[name]).rows(view)


def recipe_rows(recipes: list[dict[str, Any]]) -> Rows:
    rows: Rows = {}
    for r in recipes:
        description = r.get("description") or (f"does not compose: {r['error']}" if r.get("error") else "")
        rows[r["name"]] = [Cell(r["name"]), Cell(r.get("task", "")), Cell(r.get("hardware", "")),
                           Cell(description, style="red" if r.get("error") else "")]
    return rows


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
