"""The systemd unit that runs `pitstop plans watch` on the head or login node.

The unit is data (`pitstop.systemd`, as the agent's is); `plans service` prints or
writes it.
"""

from __future__ import annotations

import sys

from pitstop.systemd import render_unit

UNIT_NAME = "pitstop-plans-watch.service"


def watch_unit(state_dir: str, python: str = sys.executable, interval: float = 30.0,
               slurm_conf: str | None = None) -> str:
    service = [("Type", "simple"),
               ("ExecStart", f"{python} -m pitstop plans watch --state-dir {state_dir} --interval {interval:g}"),
               ("Restart", "always"), ("RestartSec", "10")]
    if slurm_conf:
        service.insert(1, ("Environment", f"SLURM_CONF={slurm_conf}"))
    return render_unit({
        "Unit": [("Description", "pitstop plans watch: keep training plans' reservations and jobs as booked"),
                 ("After", "network-online.target slurmctld.service"),
                 ("Wants", "network-online.target")],
        "Service": service,
        "Install": [("WantedBy", "multi-user.target")],
    })
