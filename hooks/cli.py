"""`pitstop check …` and `pitstop hooks …`: health checks and Slurm entry points.

Exit codes: 0 pass (warnings included), 1 a check failed, 2 a usage or settings error,
3 `--resume` refused (the node is not pitstop's to resume, or it is running jobs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from pitstop.hooks.config import DataFileError, load_config, this_node

CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=str),
                             default=None, help="Settings file (default $PITSTOP_HOOKS_CONFIG, "
                                                "else /etc/pitstop/hooks.yaml where it exists).")
NODE_OPTION = click.option("--node", default=None, help="This node's Slurm name (default "
                                                         "$SLURMD_NODENAME, else the short hostname).")


# A hook's one Slurm call (drain or resume) must leave it time inside Slurm's limits.
HOOK_SLURM_TIMEOUT_S = 10.0


class SettingsError(click.ClickException):
    exit_code = 2


def _config(config_path: str | None, node: str):
    try:
        return load_config(config_path, node=node)
    except DataFileError as exc:
        raise SettingsError(str(exc)) from None


def _format_value(result) -> str:
    if result.value is None:
        return ""
    return f"{result.value} {result.unit}".strip() if not isinstance(result.value, float) else \
        f"{result.value:g} {result.unit}".strip()


def _print_results(results, stream=None) -> None:
    rows = [(r.status.upper(), r.name + (f" [{r.device}]" if r.device else ""), _format_value(r),
             r.message) for r in results]
    width = max((len(r[1]) for r in rows), default=10)
    for status, name, value, message in rows:
        click.echo(f"{status:<5} {name:<{width}}  {value:<24} {message}", file=stream)


@click.group()
def check() -> None:
    """Health checks on this node (quick, full) or across nodes (cluster)."""


@check.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check.")
def check_list(config_path: str | None, as_json: bool) -> None:
    """Every check, with its level and threshold under the current settings."""
    from pitstop.hooks.checks import registered
    config = _config(config_path, this_node())
    rows = [{"name": c.name, "level": c.level, "threshold": c.threshold(config), "description": c.description}
            for c in registered().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['level']:<6} {row['name']:<17} {row['description']}\n{'':<24} threshold: {row['threshold']}")


def _run_level(level: str, config_path: str | None, node: str | None, as_json: bool):
    from pitstop.hooks.checks import CheckContext, overall, run_level
    node = node or this_node()
    config = _config(config_path, node)
    started = time.monotonic()
    results = run_level(level, CheckContext(config, node=node, env=dict(os.environ)))
    elapsed = time.monotonic() - started
    verdict = overall(results)
    if as_json:
        click.echo(json.dumps({"node": node, "level": level, "status": verdict, "seconds": round(elapsed, 3),
                               "results": [r.to_dict() for r in results]}, indent=2))
    else:
        _print_results(results)
        click.echo(f"{level} check on {node}: {verdict} ({elapsed:.1f}s)")
    return node, results, verdict


@check.command("quick")
@CONFIG_OPTION
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="The results as JSON.")
def check_quick(config_path: str | None, node: str | None, as_json: bool) -> None:
    """The quick checks (seconds): counters, devices, disk, mounts, agent, clock."""
    _, _, verdict = _run_level("quick", config_path, node, as_json)
    sys.exit(1 if verdict == "fail" else 0)


@check.command("full")
@CONFIG_OPTION
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="The results as JSON.")
@click.option("--resume", is_flag=True,
              help="Return the node to service: resume it if it passes and its Slurm reason is "
                   "pitstop's; fail it with `pitstop: Action:Replace …` if it does not.")
def check_full(config_path: str | None, node: str | None, as_json: bool, resume: bool) -> None:
    """The quick checks, then real load on every device (minutes; the node to itself)."""
    if not resume:
        _, _, verdict = _run_level("full", config_path, node, as_json)
        sys.exit(1 if verdict == "fail" else 0)
    from pitstop.hooks import fencing
    from pitstop.hooks.checks import summary
    from pitstop.slurm import Slurm, SlurmError
    slurm = Slurm()
    name = node or this_node()
    try:
        before = slurm.node(name)
    except SlurmError as exc:
        raise click.ClickException(f"cannot read {name} from Slurm: {exc}") from None
    if before is None:
        raise click.ClickException(f"Slurm knows no node {name!r}")
    if not before.fenced_by_pitstop:
        click.echo(f"{name}: reason {before.reason!r} is not pitstop's: not resuming it", err=True)
        sys.exit(3)
    if before.state in {"ALLOCATED", "MIXED", "COMPLETING"} or before.jobs:
        click.echo(f"{name} is running jobs ({before.state_label}): the full check needs it to itself", err=True)
        sys.exit(3)
    _, results, verdict = _run_level("full", config_path, name, as_json)
    try:  # read again: an operator may have taken the node over during the check
        after = slurm.node(name) or before
    except SlurmError:
        after = before
    action = fencing.resume_action(after, verdict == "fail")
    if action == "not-pitstops":
        click.echo(f"{name}: reason became {after.reason!r} during the check: left alone", err=True)
        sys.exit(3)
    reason = fencing.replace_reason(summary(results)) if action == "replace" else ""
    try:
        fencing.apply(slurm, name, action, reason)
    except SlurmError as exc:
        raise click.ClickException(f"{action} {name}: {exc}") from None
    click.echo(f"{name}: {'resumed' if action == 'resume' else 'failed: ' + reason}", err=True)
    sys.exit(1 if verdict == "fail" else 0)


@check.command("cluster")
@click.argument("nodelist")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--partition", default=None, help="Partition to run in (default: Slurm's default).")
@click.option("--size-mib", type=float, default=16.0, show_default=True, help="All-reduce message size.")
@click.option("--iterations", type=int, default=10, show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Shared directory the job writes its figures to (default ./pitstop-check-cluster-<time>).")
@click.option("--timeout", type=float, default=900.0, show_default=True, help="Seconds to wait for the job.")
def check_cluster(nodelist: str, as_json: bool, partition: str | None, size_mib: float, iterations: int,
                  out_dir: Path | None, timeout: float) -> None:
    """All-reduce bandwidth over NODELIST and over every pair of its nodes, as a Slurm job;
    names the slow node or link."""
    from pitstop.hooks.cluster import ClusterJob, format_report, run_cluster_check
    from pitstop.slurm import Slurm, SlurmError
    out = (out_dir or Path.cwd() / f"pitstop-check-cluster-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    try:
        job = ClusterJob(nodelist, out, size_bytes=int(size_mib * (1 << 20)), iterations=iterations,
                         partition=partition)
        report = run_cluster_check(Slurm(), job, timeout=timeout)
    except (SlurmError, ValueError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    sys.exit(0 if report.ok else 1)


@click.group()
def hooks() -> None:
    """Slurm's Prolog, Epilog and HealthCheckProgram, and installing them on a node."""


def _hook_command(name: str, help_text: str) -> click.Command:
    @hooks.command(name, help=help_text)
    @CONFIG_OPTION
    @NODE_OPTION
    def command(config_path: str | None, node: str | None) -> None:
        from pitstop.hooks.entry import HOOKS, report
        from pitstop.slurm import Slurm
        started = time.monotonic()
        name_ = node or this_node()
        try:
            config = load_config(config_path, node=name_)
        except DataFileError as exc:
            # A broken settings file must not take a node out of every job: say so and let it run.
            click.echo(f"pitstop {name}: settings unusable, checks skipped: {exc}", err=True)
            sys.exit(0)
        run = HOOKS[name](config, name_, Slurm(timeout=HOOK_SLURM_TIMEOUT_S), dict(os.environ))
        report(run)
        click.echo(f"pitstop {name}: {time.monotonic() - started:.2f}s", err=True)
        sys.exit(run.exit_code)

    return command


_hook_command("prolog", "Slurm Prolog: the quick check; on failure drain this node and exit 1 "
                        "(Slurm requeues the job).")
_hook_command("epilog", "Slurm Epilog: kill the job's stray GPU processes; after a failed job, the "
                        "quick check (drain on failure).")
_hook_command("healthcheck", "Slurm HealthCheckProgram: the quick check and the agent; drain on failure, "
                             "resume what a quick check fenced once it passes.")


INSTALL_OPTIONS = [
    click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
                 show_default=True, help="Root to install under (a staged image, a test directory)."),
    click.option("--python", "python", default=sys.executable, show_default=True,
                 help="Interpreter the unit and the Slurm wrappers run."),
    click.option("--slurm-conf", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="slurm.conf to edit (default <prefix>/etc/slurm/slurm.conf)."),
    click.option("--dry-run", is_flag=True, help="Print every file and change; write nothing."),
]


def _install_options(func):
    for option in reversed(INSTALL_OPTIONS):
        func = option(func)
    return func


def _do_install(prefix: Path, python: str, slurm_conf: Path | None, dry_run: bool):
    from pitstop.hooks.install import InstallPlan, describe, install, plan_steps
    plan = InstallPlan(prefix=prefix.resolve() if str(prefix) != "/" else Path("/"), python=python,
                       slurm_conf=slurm_conf)
    if dry_run:
        click.echo(describe(plan, plan_steps(plan)), nl=False)
        return plan
    try:
        steps, manifest = install(plan)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    for step in steps:
        click.echo(f"{step.kind:<7} {step.path}" + (f" ({step.detail})" if step.detail else ""))
    return plan


@hooks.command("install")
@_install_options
def hooks_install(prefix: Path, python: str, slurm_conf: Path | None, dry_run: bool) -> None:
    """Write the agent's systemd unit and settings and add pitstop's lines to slurm.conf."""
    _do_install(prefix, python, slurm_conf, dry_run)


@hooks.command("uninstall")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True)
def hooks_uninstall(prefix: Path) -> None:
    """Take back everything `pitstop hooks install` did under PREFIX."""
    from pitstop.hooks.install import uninstall
    try:
        for line in uninstall(prefix.resolve() if str(prefix) != "/" else Path("/")):
            click.echo(line)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


@hooks.command("node-setup")
@_install_options
def hooks_node_setup(prefix: Path, python: str, slurm_conf: Path | None, dry_run: bool) -> None:
    """What cloud-init or a lifecycle script calls: install, then enable and start the agent."""
    from pitstop.hooks.install import enable_commands
    plan = _do_install(prefix, python, slurm_conf, dry_run)
    commands = enable_commands(plan.prefix)
    if not commands:
        click.echo(f"prefix {plan.prefix} is not this machine's root: systemd left alone")
    for command in commands:
        click.echo(("would run: " if dry_run else "run: ") + " ".join(command))
        if not dry_run:
            proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise click.ClickException(f"{' '.join(command)}: {proc.stderr.strip()}")
