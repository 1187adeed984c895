"""Report a condition once when it starts or worsens, not on every poll.

The polled sources (nvml, neuron, host) see the same fault on every poll: a pending row
remap stays pending until the reboot. Each poll they list the conditions that hold now;
`report_changes` turns that list into findings only for what is new or has grown since
the last poll, and hands back what holds now so the caller passes it to the next poll.
The state is a plain immutable mapping the caller keeps, never a hidden global.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from pitstop.model import Finding

EVIDENCE_CAP = 2000

# (signal, code, device) -> the value last seen: a count, a deficit, 1 for a flag.
Reported = Mapping[tuple[str, str, str], float]

NOTHING_REPORTED: Reported = MappingProxyType({})


@dataclass(frozen=True)
class Condition:
    """One fault that holds in this poll.

    `value` orders how bad it is (a counter's count, a link's missing lanes, 1 for a
    flag): a condition that already held is reported again only when `value` grew.
    """

    signal: str
    code: str = ""
    device: str = ""
    value: float = 1
    message: str = ""
    evidence: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.signal, self.code, self.device)


def report_changes(node: str, source: str, conditions: Iterable[Condition],
                   previous: Reported, now: float) -> tuple[list[Finding], Reported]:
    """Findings for the conditions that are new or worse than in `previous`, and the
    conditions that hold now (what the caller passes as `previous` next time).

    A condition that stops holding is forgotten, so it is reported again if it returns.
    """
    findings: list[Finding] = []
    holding: dict[tuple[str, str, str], float] = {}
    for condition in conditions:
        last = previous.get(condition.key)
        if last is None or condition.value > last:
            findings.append(Finding(node=node, signal=condition.signal, code=condition.code,
                                    device=condition.device, message=condition.message,
                                    evidence=condition.evidence[:EVIDENCE_CAP], time=now,
                                    source=source))
        holding[condition.key] = max(condition.value, last or condition.value)
    return findings, MappingProxyType(holding)


def count_low(found: int, expected: int | None, what: str) -> list[Condition]:
    """`accelerator_count_low` when fewer than `expected` accelerators were found."""
    if expected is None or found >= expected:
        return []
    return [Condition("accelerator_count_low", f"{found}/{expected}", "",
                      message=f"found {found} {what}, expected {expected}",
                      evidence=f"found={found} expected={expected}")]
