"""What the hooks do to a node in Slurm, decided from check results and the node's reason.

The whole contract in a few rules (NHC's node-mark-offline/online): a reason the hooks
write starts with `pitstop: quick check failed`; a node is resumed only when its reason is
pitstop's, and the HealthCheckProgram resumes only the reasons a quick check wrote (a node
the agent fenced for a hardware fault goes back only through a passing full check); an
operator's reason is never touched. The decisions are pure functions of a `Node` and a
verdict; `apply` is the one place that calls Slurm.
"""

from __future__ import annotations

from pitstop.model import PITSTOP_REASON_PREFIX, REPLACE_REASON, Node
from pitstop.slurm import Slurm

QUICK_REASON = f"{PITSTOP_REASON_PREFIX} quick check failed"
REASON_LIMIT = 240  # Slurm keeps long reasons, but sinfo columns and people do not


def quick_reason(hook: str, failed_summary: str) -> str:
    return _cap(f"{QUICK_REASON} ({hook}): {failed_summary}")


def replace_reason(failed_summary: str) -> str:
    return _cap(f"{REPLACE_REASON} full check failed: {failed_summary}")


def _cap(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_LIMIT else reason[:REASON_LIMIT - 1] + "…"


def _out_of_service(node: Node) -> bool:
    return node.drained or node.failed or node.down


# (verdict failed?, node out of service?, reason is a quick check's?) -> action
_HEALTHCHECK_ACTIONS = {
    (True, False, False): "drain",
    (True, False, True): "drain",
    (True, True, False): "none",  # already out: keep whoever's reason it is
    (True, True, True): "none",
    (False, False, False): "none",
    (False, False, True): "none",
    (False, True, True): "resume",  # the quick check that fenced it passes again
    (False, True, False): "none",  # an operator's reason, or the agent's: not ours to undo
}


def healthcheck_action(node: Node, failed: bool) -> str:
    return _HEALTHCHECK_ACTIONS[(failed, _out_of_service(node), node.reason.startswith(QUICK_REASON))]


def prolog_action(node: Node | None, failed: bool) -> str:
    """A failing Prolog drains its node (unless someone already took it out)."""
    if not failed:
        return "none"
    return "drain" if node is None or not _out_of_service(node) else "none"


def resume_action(node: Node, failed: bool) -> str:
    """`check full --resume`: only a node pitstop fenced; pass resumes, fail escalates."""
    if not node.fenced_by_pitstop:
        return "not-pitstops"
    return "replace" if failed else "resume"


def apply(slurm: Slurm, node: str, action: str, reason: str = "") -> None:
    """Carry out an action from the tables above."""
    steps = {
        "drain": lambda: slurm.drain(node, reason),
        "replace": lambda: slurm.fail(node, reason),
        "resume": lambda: slurm.resume(node),
    }
    if action in steps:
        steps[action]()
