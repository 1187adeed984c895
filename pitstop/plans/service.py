"""The systemd unit that runs `pitstop plans watch` on the head or login node.

The unit is data (sections of key/value pairs) rendered in one place, so the options
read as a table; `plans service` prints or writes it.
"""

from __future__ import annotations

import sys

UNIT_NAME = "pitstop-plans-watch.service"


def render_unit(sections: dict[str, list[tuple[str, str]]]) -> str:
    """INI text for systemd: one `[Section]` block per key, lines in the order given."""
    blocks = []
    for section, pairs in sections.items():
        blocks.append("\n".join([f"[{section}]", *(f"{key}={value}" for key, value in pairs)]))
    return "\n\n".join(blocks) + "\n"


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
