"""`pitstop tui`: the terminal UI, on the login node or over SSH from a laptop.

Builds the provider from the flags and the config file, then runs the app. Everything
that can be wrong before the screen starts (a bad config file, a bad --ssh target) is
one line on stderr and exit status 2; everything after is a message on the screen.
"""

from __future__ import annotations

from pathlib import Path

import click

from pitstop.tui.providers import DEFAULT_STATE_DIR


@click.command(name="tui", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ssh", "ssh_spec", metavar="USER@HOST[:PORT]",
              help="Read the cluster through this login node (paramiko; known_hosts is checked).")
@click.option("--readonly", is_flag=True, default=None,
              help="Look, never touch: drain, resume, requeue, cancel and launch are refused.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help=f"The agents' state directory [default: $PITSTOP_STATE_DIR or {DEFAULT_STATE_DIR}; "
                   "over SSH: the login node's].")
@click.option("--interval", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between refreshes [default: 2, or the config file's].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Config file [default: ~/.config/pitstop/tui.yaml]: keymap, interval, readonly.")
@click.option("--identity-file", "-i", type=click.Path(dir_okay=False), default=None,
              help="SSH private key (default: ssh-agent, then ~/.ssh/id_*).")
@click.option("--known-hosts", type=click.Path(dir_okay=False), default=None,
              help="known_hosts to check the host key against [default: ~/.ssh/known_hosts].")
@click.option("--ssh-config", type=click.Path(dir_okay=False), default=None,
              help="OpenSSH client config for host aliases [default: ~/.ssh/config].")
def tui(ssh_spec: str | None, readonly: bool | None, state_dir: Path | None, interval: float | None,
        config_path: Path | None, identity_file: str | None, known_hosts: str | None,
        ssh_config: str | None) -> None:
    """The terminal UI: nodes, jobs, checkpoints, recipes and events of one cluster.

    Keys in the manner of k9s: `:` picks a view (nodes, jobs, ckpt, recipes, events),
    `/` filters, `?` lists every key."""
    from pitstop.tui.app import DEFAULT_INTERVAL_S, PitstopApp, binding_ids
    from pitstop.tui.config import load_config
    from pitstop.tui.providers import LocalStreamProvider, SshProvider, ssh_target

    try:
        config = load_config(config_path, binding_ids())
    except ValueError as exc:
        raise click.UsageError(f"config: {exc}") from None
    if ssh_spec:
        try:
            target = ssh_target(ssh_spec, key_file=identity_file, known_hosts=known_hosts,
                                ssh_config=ssh_config)
        except (ValueError, OSError) as exc:
            raise click.UsageError(f"--ssh {ssh_spec}: {exc}") from None
        provider = SshProvider(target, state_dir=str(state_dir) if state_dir else None)
    else:
        provider = LocalStreamProvider(state_dir=state_dir)
    app = PitstopApp(provider,
                     readonly=bool(readonly if readonly is not None else config.get("readonly", False)),
                     interval=float(interval or config.get("interval") or DEFAULT_INTERVAL_S),
                     keymap=config.get("keymap") or {})
    try:
        app.run()
    finally:
        provider.close()
