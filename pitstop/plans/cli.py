"""`pitstop plans …`: search for capacity, book it as reservations, see and change plans.

Every command reads Slurm through `pitstop.slurm` and plans from the state directory;
`--json` prints one JSON document for scripts and the TUI.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from pitstop.plans import spans
from pitstop.plans.store import PlanError, PlanStore
from pitstop.slurm import Slurm, SlurmError
from pitstop.status import state_dir_option


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _parsed(value: str | None, flag: str, parse=spans.parse_span) -> float | None:
    """A span (or, with `parse=spans.parse_moment`, a moment) from an option; a bad one
    is a usage error that names the option."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None


@click.group()
def plans() -> None:
    """Training plans: find capacity, book it as Slurm reservations, carry a run across it."""


@plans.command("search")
@click.option("--nodes", type=int, required=True, help="Nodes the run needs throughout.")
@click.option("--duration", required=True, help="Total training time: 6m, 12h, 14d, 1h30m.")
@click.option("--min-duration", default="1m", show_default=True,
              help="The shortest segment worth booking in a split offering.")
@click.option("--max-duration", default=None, help="The longest one segment may be.")
@click.option("--after", default=None, help="Start no earlier than this: now+2h, 2026-12-07T09:00.")
@click.option("--before", default=None, help="End no later than this.")
@click.option("--partition", default=None)
@click.option("--max-segments", type=int, default=1, show_default=True,
              help="Offer combinations of up to this many segments (with gaps between).")
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def search_command(nodes: int, duration: str, min_duration: str, max_duration: str | None,
                   after: str | None, before: str | None, partition: str | None, max_segments: int,
                   as_json: bool, state_dir: Path) -> None:
    """Offerings for NODES nodes during DURATION, best first (book one with `plans book ID`)."""
    from pitstop.plans.calendar import INFINITE
    from pitstop.plans.offers import find_offerings

    total = _parsed(duration, "--duration")
    longest = _parsed(max_duration, "--max-duration")
    try:
        offerings = find_offerings(Slurm(), nodes, total, after=_parsed(after, "--after", spans.parse_moment),
                                   before=_parsed(before, "--before", spans.parse_moment), partition=partition,
                                   max_segments=max_segments,
                                   min_segment=_parsed(min_duration, "--min-duration"),
                                   max_segment=INFINITE if longest is None else longest)
        PlanStore(state_dir).save_offerings(offerings)
    except (ValueError, SlurmError, OSError) as exc:
        raise _fail(exc) from None
    if as_json:
        _echo_json({"now": time.time(), "offerings": offerings})
        return
    if not offerings:
        click.echo("no offering: not enough usable nodes in the time asked for", err=True)
        sys.exit(1)
    for offer in offerings:
        gaps = ", ".join(spans.human_span(g) for g in offer["gaps_s"]) or "none"
        click.echo(f"{offer['id']}: {spans.local_time(offer['start'])} to {spans.local_time(offer['end'])}"
                   f"  span {spans.human_span(offer['span_s'])}  segments {len(offer['segments'])}  gaps {gaps}")
        for k, seg in enumerate(offer["segments"], start=1):
            click.echo(f"    s{k}: {spans.local_time(seg['start'])} to {spans.local_time(seg['end'])}"
                       f"  {seg['nodes']} nodes  {spans.human_span(seg['end'] - seg['start'])}")


@plans.command("book")
@click.argument("offering")
@click.option("--name", required=True, help="The plan's name (reservations pitstop-NAME-s1, -s2…).")
@click.option("--users", default=None, help="Comma-separated users allowed in (default: you).")
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def book_command(offering: str, name: str, users: str | None, as_json: bool, state_dir: Path) -> None:
    """Book OFFERING (an id from the last `plans search`): every segment or none."""
    from pitstop.plans.book import book

    store = PlanStore(state_dir)
    try:
        offer = store.offering(offering)
        plan = book(Slurm(), store, name, offer, users=[u for u in (users or "").split(",") if u] or None,
                    partition=offer.get("partition"))
    except (PlanError, SlurmError, OSError) as exc:
        raise _fail(exc) from None
    if as_json:
        _echo_json(plan.to_dict())
        return
    click.echo(f"booked plan {plan.name}: " + ", ".join(s.reservation for s in plan.segments))


def _plan_rows(store: PlanStore, name: str | None, now: float) -> list[dict[str, Any]]:
    from pitstop.plans.status import plan_state

    chosen = [store.load(name)] if name else store.all()
    rows = []
    for plan in chosen:
        state = plan_state(plan, now)
        rows.append({"name": plan.name, "state": state.state, "label": state.label,
                     "segment": state.segment, "next_change": state.next_change,
                     "owner": plan.owner, "failed": plan.failed,
                     "run_dir": plan.run.run_dir if plan.run else None,
                     "segments": [vars(s).copy() for s in plan.segments]})
    return rows


@plans.command("list")
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def list_command(as_json: bool, state_dir: Path) -> None:
    """Every plan and where it stands."""
    _print_states(PlanStore(state_dir), None, as_json)


@plans.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def status_command(name: str | None, as_json: bool, state_dir: Path) -> None:
    """Where one plan (or every plan) stands: Scheduled, Active, Between segments, Expired, Failed."""
    _print_states(PlanStore(state_dir), name, as_json)


def _print_states(store: PlanStore, name: str | None, as_json: bool) -> None:
    now = time.time()
    try:
        rows = _plan_rows(store, name, now)
    except PlanError as exc:
        raise _fail(exc) from None
    if as_json:
        _echo_json(rows if name is None else rows[0])
        return
    if not rows:
        click.echo("no plans", err=True)
        return
    click.echo(f"{'PLAN':<20} {'STATE':<22} {'SEGMENTS':<9} {'NEXT':<20} RUN")
    for row in rows:
        nxt = (f"in {spans.human_span(row['next_change'] - now)}" if row["next_change"] else "-")
        click.echo(f"{row['name']:<20} {row['label']:<22} {len(row['segments']):<9} {nxt:<20} "
                   f"{row['run_dir'] or '-'}")
        if row["failed"]:
            click.echo(f"    failed: {row['failed']}")


@plans.command("chart")
@click.argument("name", required=False)
@click.option("--width", type=click.IntRange(min=10, max=400), default=72, show_default=True,
              help="Columns of the time axis.")
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def chart_command(name: str | None, width: int, as_json: bool, state_dir: Path) -> None:
    """Node by time: running jobs to their projected end (=), reservations (#), the plan's
    segments (S), now (|), and the countdown to the next pause or start."""
    from pitstop.plans.picture import from_cluster
    from pitstop.slurm import Slurm, SlurmError

    store = PlanStore(state_dir)
    try:
        if name is not None:
            store.load(name)  # a clear error for a plan that does not exist
        shown = [p for p in from_cluster(Slurm(), store, width=width) if name is None or p["name"] == name]
    except (PlanError, SlurmError) as exc:
        raise _fail(exc) from None
    if as_json:
        _echo_json(shown)
        return
    if not shown:
        click.echo("no plans", err=True)
        return
    for picture in shown:
        countdown = f" · {picture['countdown']['text']}" if picture["countdown"] else ""
        click.echo(f"{picture['name']}: {picture['label']}{countdown}")
        for line in picture["lines"]:
            click.echo(line)
        click.echo("")


@plans.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def show_command(name: str, as_json: bool, state_dir: Path) -> None:
    """One plan in full: segments, their reservations as Slurm has them, jobs and events."""
    from pitstop.plans.status import plan_state

    try:
        plan = PlanStore(state_dir).load(name)
        live = {r.name: r for r in Slurm().reservations()}
    except (PlanError, SlurmError) as exc:
        raise _fail(exc) from None
    state = plan_state(plan, time.time())
    if as_json:
        _echo_json({**plan.to_dict(), "state": state.state, "label": state.label,
                    "reservations": {n: r.to_dict() for n, r in live.items()
                                     if n in {s.reservation for s in plan.segments}}})
        return
    click.echo(f"plan {plan.name}  {state.label}  owner {plan.owner}  users {','.join(plan.users)}")
    if plan.run:
        click.echo(f"run: {plan.run.recipe} {' '.join(plan.run.overrides)} in {plan.run.run_dir}"
                   f" (grace {spans.human_span(plan.run.grace_s)})")
    for seg in plan.segments:
        resv = live.get(seg.reservation)
        where = f"{resv.state} on {','.join(resv.nodes)}" if resv else "MISSING in Slurm"
        click.echo(f"  s{seg.index} {seg.reservation}: {spans.local_time(seg.start)} to "
                   f"{spans.local_time(seg.end)}  {seg.nodes} nodes  {where}  job {seg.job_id or '-'}")
    for event in plan.events[-10:]:
        click.echo(f"  {spans.local_time(event['time'])}  {event['what']}")


@plans.command("attach", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("recipe")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="The run directory every segment shares [default: ./runs/plan-NAME].")
@click.option("--grace", default="2m", show_default=True,
              help="Stop this long before each segment ends: checkpoint, exit, Slurm's KillWait.")
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def attach_command(name: str, recipe: str, overrides: tuple[str, ...], run_dir: Path | None, grace: str,
                   as_json: bool, state_dir: Path) -> None:
    """Carry RECIPE (with key=value OVERRIDES) across plan NAME: one job per segment."""
    from pitstop.plans.attach import attach

    grace_s = _parsed(grace, "--grace")
    store = PlanStore(state_dir)
    try:
        plan, done = attach(Slurm(), store, name, recipe, list(overrides), run_dir=run_dir, grace_s=grace_s)
    except (PlanError, SlurmError, OSError) as exc:
        raise _fail(exc) from None
    if as_json:
        _echo_json(plan.to_dict())
        return
    click.echo(f"plan {name} carries {recipe} in {plan.run.run_dir}")
    for line in done:
        click.echo(f"  {line}")


@plans.command("extend")
@click.argument("name")
@click.option("--by", "by", required=True, help="How much later the last segment ends: 30m, 2h.")
@state_dir_option
def extend_command(name: str, by: str, state_dir: Path) -> None:
    """End plan NAME's last segment later, if its nodes are free until then."""
    from pitstop.plans.change import extend

    try:
        plan = extend(Slurm(), PlanStore(state_dir), name, _parsed(by, "--by"))
    except (PlanError, SlurmError) as exc:
        raise _fail(exc) from None
    click.echo(f"{plan.segments[-1].reservation} now ends {spans.local_time(plan.segments[-1].end)}")


@plans.command("cancel")
@click.argument("name")
@state_dir_option
def cancel_command(name: str, state_dir: Path) -> None:
    """Cancel plan NAME: its waiting jobs and its reservations (not those with running jobs)."""
    from pitstop.plans.change import cancel

    try:
        _plan, problems = cancel(Slurm(), PlanStore(state_dir), name)
    except (PlanError, SlurmError) as exc:
        raise _fail(exc) from None
    for line in problems:
        click.echo(line, err=True)
    click.echo(f"plan {name} cancelled" + (f"; {len(problems)} reservation(s) left" if problems else ""))
    if problems:
        sys.exit(1)


@plans.command("watch")
@click.option("--once", is_flag=True, help="One pass, then exit.")
@click.option("--interval", type=float, default=30.0, show_default=True, help="Seconds between passes.")
@state_dir_option
def watch_command(once: bool, interval: float, state_dir: Path) -> None:
    """Keep every plan's reservations and jobs as booked (a service; see `plans service`)."""
    import logging

    from pitstop.plans.watch import reconcile, watch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = PlanStore(state_dir)
    if once:
        try:
            for line in reconcile(Slurm(), store):
                click.echo(line)
        except (PlanError, SlurmError) as exc:
            raise _fail(exc) from None
        return
    watch(Slurm(), store, interval)


@plans.command("service")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Write the unit here (e.g. /etc/systemd/system/pitstop-plans-watch.service).")
@click.option("--interval", type=float, default=30.0, show_default=True)
@state_dir_option
def service_command(output: Path | None, interval: float, state_dir: Path) -> None:
    """Print (or write) the systemd unit that runs `plans watch` on the head or login node."""
    import os

    from pitstop.fsutil import write_atomic
    from pitstop.plans.service import watch_unit

    text = watch_unit(str(Path(state_dir).absolute()), interval=interval,
                      slurm_conf=os.environ.get("SLURM_CONF"))
    if output is None:
        click.echo(text, nl=False)
        return
    write_atomic(output, text)
    click.echo(f"wrote {output}; then: systemctl daemon-reload && systemctl enable --now {output.name}")
