"""`pitstop agent …`: the node agent's commands.

`policy show` and `policy check` let an operator see the policy the agent would use and
check an override file before deploying it. `run` (the agent's loop) is added beside
them in this group by the agent's run-loop change.
"""

from __future__ import annotations

import sys

import click

from pitstop.daemon.policy import DEFAULT_POLICY, Policy
from pitstop.yamlfile import DataFileError

EXIT_INVALID = 2


@click.group(name="agent", help="The node agent: watch, decide, fence.")
def agent() -> None:
    """The node agent's commands."""


def _run_options(func):
    """One flag per AgentConfig setting; a flag given wins over the config file."""
    from pitstop.daemon.config import AgentConfig
    flags = [
        ("--node", str, "Slurm node name (default $SLURMD_NODENAME or the short host name)."),
        ("--state-dir", click.Path(path_type=str), "Where the state file, event log and cursor live."),
        ("--kmsg", str, "/dev/kmsg, or a plain kernel-log file (the testbed's)."),
        ("--boot-id-file", str, "The boot id's file (/proc/sys/kernel/random/boot_id)."),
        ("--policy", click.Path(path_type=str), "An operator's policy file over the shipped default."),
        ("--listen", str, "Address for /metrics and /status."),
        ("--port", int, "Port for /metrics and /status (0 picks one)."),
        ("--interval", float, "Seconds between telemetry polls."),
        ("--jobs-interval", float, "Seconds between reads of this node's jobs from Slurm."),
        ("--kmsg-poll", float, "Seconds between polls of a plain-file kernel log."),
        ("--nvml", str, "auto, off, or replay:<recorded.jsonl>."),
        ("--neuron", str, "auto or off."),
        ("--expected-gpus", int, "GPUs this node should have."),
        ("--expected-neuron-devices", int, "Neuron devices this node should have."),
        ("--memory-min-available", str, "Least available memory before a finding (\"2%\", \"4GiB\")."),
        ("--slurm-timeout", float, "Seconds before a Slurm command is given up."),
        ("--slurmd-pidfile", str, "This node's slurmd pid file, watched for slurmd's death (\"\" turns it off)."),
        ("--slurmd-grace", float, "Seconds slurmd may be gone before the node is set DOWN."),
        ("--accelerator-glob", str, "Device files that count as accelerators."),
        ("--max-fenced-share", float, "Blast radius: the most of the cluster pitstop may fence."),
        ("--breaker-window", float, "Seconds a fence counts against the blast radius."),
        ("--stall-k", float, "A step slower than k x the recent median is a hang."),
        ("--stall-floor", float, "Never call a hang before this many seconds."),
        ("--stall-startup", float, "Seconds a (re)started run may take to its first step (default 4 x the floor)."),
        ("--return-check", click.Choice(["full", "none"]),
         "Back from a reboot: `full` returns the node only through `pitstop check full --resume`."),
        ("--return-check-config", str, "The hooks' settings file the return check reads."),
        ("--return-check-timeout", float, "Seconds before a running return check counts as hung."),
        ("--log-level", click.Choice(["debug", "info", "warning", "error"]), "Log level."),
    ]
    for flag, kind, help_text in reversed(flags):
        func = click.option(flag, type=kind, default=None, help=help_text)(func)
    func = click.option("--disk", "disk", multiple=True, metavar="PATH=MIN_FREE",
                        help="A checkpoint or scratch path and its least free space (\"/ckpt=10%\").")(func)
    func = click.option("--gpu-bus-id", "gpu_bus_ids", multiple=True,
                        help="PCI bus id of GPU 0, 1, … in order (NVML tells when it runs).")(func)
    func = click.option("--replace-command", multiple=True,
                        help="Operator replace command, one argument per flag; the node name is appended.")(func)
    func = click.option("--dry-run", is_flag=True, default=None,
                        help="Shadow mode: decide and report everything, act on nothing.")(func)
    func = click.option("--config", "config_path", type=click.Path(path_type=str),
                        default=None, help="Settings file (default /etc/pitstop/agent.yaml when it exists).")(func)
    del AgentConfig
    return func


_FLAG_TO_SETTING = {"slurm_timeout": "slurm_timeout_s", "interval": "interval_s", "jobs_interval": "jobs_interval_s", "kmsg_poll": "kmsg_poll_s",
                    "slurmd_grace": "slurmd_grace_s",
                    "breaker_window": "breaker_window_s", "stall_floor": "stall_floor_s", "stall_startup": "stall_startup_s",
                    "return_check_timeout": "return_check_timeout_s"}


@agent.command(name="run")
@_run_options
def run(config_path: str | None, **flags) -> None:
    """Run the agent on this node until SIGTERM."""
    import logging
    from pathlib import Path

    from pitstop.daemon.config import DEFAULT_CONFIG, load_config

    replace = flags.pop("replace_command")
    disks = flags.pop("disk")
    if disks:
        bad = [d for d in disks if "=" not in d]
        if bad:
            click.echo(f"--disk {bad[0]!r}: expected PATH=MIN_FREE, e.g. /ckpt=10%", err=True)
            sys.exit(EXIT_INVALID)
        flags["disk"] = dict(d.rsplit("=", 1) for d in disks)
    bus_ids = flags.pop("gpu_bus_ids")
    if bus_ids:
        flags["gpu_bus_ids"] = list(bus_ids)
    overrides = {_FLAG_TO_SETTING.get(k, k): v for k, v in flags.items()}
    if replace:
        overrides["replace_command"] = list(replace)
    if config_path == "/dev/null":
        path = None
    else:
        path = Path(config_path) if config_path else DEFAULT_CONFIG
    try:
        config = load_config(path, overrides)
    except DataFileError as err:
        click.echo(str(err), err=True)
        sys.exit(EXIT_INVALID)
    logging.basicConfig(level=getattr(logging, config.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pitstop.daemon.agent import run_agent
    try:
        code = run_agent(config)
    except DataFileError as err:  # the policy (or a pattern file) is bad: say where, exit 2
        click.echo(str(err), err=True)
        sys.exit(EXIT_INVALID)
    sys.exit(code)


@agent.group(name="policy")
def policy() -> None:
    """The policy: what each finding means for the node."""


@policy.command(name="show")
@click.option("--file", "override", type=click.Path(dir_okay=False, path_type=str),
              default=None, help="An operator's override, merged over the shipped default.")
def policy_show(override: str | None) -> None:
    """Print the merged policy as YAML."""
    loaded = _load_or_exit(override)
    click.echo(f"# pitstop policy: {' + '.join(loaded.files)}")
    click.echo(loaded.to_yaml(), nl=False)


@policy.command(name="check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
def policy_check(file: str) -> None:
    """Check FILE as an override of the shipped policy: exit 0 when it loads, exit 2
    with `file:line: key: message` when it does not."""
    _load_or_exit(file)
    click.echo(f"{file}: OK (merged over {DEFAULT_POLICY.name})")


def _load_or_exit(override: str | None) -> Policy:
    try:
        return Policy.load(override)
    except DataFileError as err:
        click.echo(str(err), err=True)
        sys.exit(EXIT_INVALID)
