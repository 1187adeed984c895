"""`pitstop testbed up | down | status | inject | env`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from pitstop.testbed import faults
from pitstop.testbed.config import DEFAULT_DIR
from pitstop.testbed.procs import TestbedError

dir_option = click.option("--dir", "directory", type=click.Path(path_type=Path), default=DEFAULT_DIR,
                          show_default=True, envvar="PITSTOP_TESTBED_DIR",
                          help="The testbed's private directory (its own files, sockets and ports).")


def _testbed(directory: Path):
    from pitstop.testbed.cluster import Testbed
    return Testbed(directory)


@click.group()
def testbed() -> None:
    """A real Slurm cluster on this machine: munge, slurmctld and N slurmd."""


@testbed.command()
@dir_option
@click.option("--nodes", type=click.IntRange(1, 256), default=3, show_default=True)
@click.option("--gpus-per-node", type=click.IntRange(0, 8), default=0, show_default=True,
              help="GRES GPUs per node, backed by character devices.")
@click.option("--cpus-per-node", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option("--ssh", is_flag=True, help="Also start an sshd on 127.0.0.1 with generated keys.")
@click.option("--agents", is_flag=True,
              help="Also start one pitstop agent per node, following that node's kernel-log file.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for every node to be idle.")
def up(directory: Path, nodes: int, gpus_per_node: int, cpus_per_node: int, ssh: bool,
       agents: bool, timeout: float) -> None:
    """Bring the testbed up (harmless when it already runs)."""
    started = time.monotonic()
    try:
        layout = _testbed(directory).up(nodes=nodes, gpus_per_node=gpus_per_node, ssh=ssh,
                                        timeout=timeout, cpus_per_node=cpus_per_node,
                                        agents=agents)
    except TestbedError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"testbed up in {time.monotonic() - started:.1f}s: {layout.nodes} nodes "
               f"({', '.join(layout.node_names)}), {layout.gpus_per_node} GPUs each, in {layout.dir}")
    click.echo(f"export SLURM_CONF={layout.slurm_conf}")
    if layout.agents:
        click.echo(f"agents: http://127.0.0.1:{layout.agent_ports[0]}/status (node1) …; "
                   f"export PITSTOP_STATE_DIR={layout.agent_root}")
    if layout.ssh_port:
        click.echo(f"ssh -F {layout.ssh_dir / 'ssh_config'} pitstop-testbed")


@testbed.command()
@dir_option
def down(directory: Path) -> None:
    """Stop every process this testbed started."""
    stopped = _testbed(directory).down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@testbed.command()
@dir_option
@click.option("--json", "as_json", is_flag=True)
def status(directory: Path, as_json: bool) -> None:
    """Which testbed processes run, and the nodes as Slurm sees them."""
    info = _testbed(directory).status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    if not info["exists"]:
        click.echo(f"no testbed at {info['dir']}")
        raise SystemExit(1)
    click.echo(f"testbed at {info['dir']} (SLURM_CONF={info['slurm_conf']})")
    for name, pid in info["processes"].items():
        click.echo(f"  {name:<16} {'running, pid ' + str(pid) if pid else 'stopped'}")
    for node in info["nodes"]:
        if "error" in node:
            click.echo(f"  slurm: {node['error']}")
            continue
        state = "+".join([node["state"].lower(), *(f.lower() for f in node["flags"])])
        reason = f"  {node['reason']}" if node["reason"] else ""
        click.echo(f"  {node['name']:<8} {state:<24} gres={node['gres'] or '-'}{reason}")
    if not all(info["processes"].values()):
        raise SystemExit(1)


@testbed.command(epilog="Faults:\n\n\b\n" + faults.describe())
@dir_option
@click.argument("node")
@click.argument("fault")
@click.option("--count", type=int, default=1, show_default=True, help="Write the fault this many times.")
@click.option("--file", "file", type=click.Path(path_type=Path), default=None,
              help="For job-log faults: the output file to append to (default: the node's jobs' outputs).")
def inject(directory: Path, node: str, fault: str, count: int, file: Path | None) -> None:
    """Inject FAULT on NODE where the real one would enter."""
    try:
        click.echo(_testbed(directory).inject(node, fault, count=count, file=file))
    except (faults.FaultError, TestbedError) as exc:
        raise click.UsageError(str(exc)) from None


@testbed.command()
@dir_option
def env(directory: Path) -> None:
    """Print the environment that points Slurm's commands at this testbed."""
    try:
        layout = _testbed(directory).layout
    except TestbedError as exc:
        raise click.ClickException(str(exc)) from None
    for key, value in layout.env().items():
        click.echo(f"export {key}={value}")
