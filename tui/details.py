"""What `enter` shows: everything the view knows about one row, as a detail screen.

Pure functions of the last ClusterView, so a detail never waits on Slurm or SSH.
"""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual.screen import Screen

from pitstop.tui import screens
from pitstop.tui import views as v
from pitstop.tui.data import ClusterView


def detail_screen(view: ClusterView | None, recipes: list[dict[str, Any]], view_name: str,
                  key: str) -> Screen | None:
    """The detail screen of row `key` in view `view_name`, or None when it is gone."""
    if view_name == "recipes":
        recipe = next((r for r in recipes if r["name"] == key), None)
        if recipe is None:
            return None
        return screens.DetailScreen(f"recipe {key} · L to launch from the list",
                                    screens.detail_text(list(recipe.items())))
    if view is None:
        return None
    if view_name == "nodes" and (node := view.node(key)):
        findings = [f"{v.finding_text(node.worst_finding)} (worst)"] if node.worst_finding else []
        fields = [("node", node.node), ("slurm", node.slurm_state),
                  ("pitstop", node.health + (f" ({node.fence_class})" if node.fence_class else "")),
                  ("reason", node.reason or "-"),
                  ("reason owner", "pitstop" if node.reason_is_pitstop else ("operator" if node.reason else "-")),
                  ("accelerators", f"{'-' if node.accelerators_healthy is None else node.accelerators_healthy}"
                                   f"/{node.accelerators_total} healthy"),
                  ("open findings", node.open_findings), ("jobs", ", ".join(node.jobs) or "-"),
                  ("agent updated", f"{v.clock(node.agent_updated_at)} UTC" if node.agent_updated_at else "never"
                   + (" (stale)" if node.agent_stale else ""))]
        devices = sorted({str(e.get("finding", {}).get("device") or "node")
                          for e in view.events if e.get("node") == key and e.get("kind") == "finding"})
        recent = [f"{v.clock(e.get('time'))}  {e.get('kind')}: {v.event_text(e)}"
                  for e in view.events if e.get("node") == key][:20]
        actions = [f"{v.clock(a.get('time'))}  {a.get('action')} {'ok' if a.get('ok', True) else 'FAILED'} "
                   f"{a.get('reason', '')}" for a in node.actions]
        return screens.DetailScreen(
            f"node {key}", screens.detail_text(fields), devices_of=key,
            after=screens.detail_text([], [("worst open finding", findings), ("devices with findings", devices),
                                           ("recent events", recent), ("pitstop's actions", actions)]))
    if view_name == "jobs" and (row := view.job(key)):
        job, p = row.job, row.progress
        fields = [("job", job.job_id), ("name", job.name), ("user", job.user), ("state", job.state),
                  ("reason", job.reason or "-"), ("nodes", ",".join(job.nodes) or "-"),
                  ("partition", job.partition), ("restarts", job.restart_count),
                  ("output", job.stdout), ("work dir", job.work_dir)]
        if p is not None:
            fields += [("run dir", p.run_dir),
                       ("step", f"{p.step} of {p.max_steps}" if p.max_steps else p.step),
                       ("loss", f"{p.loss:.4f}" if p.loss is not None else "-"),
                       ("tokens/s", f"{p.tokens_per_s:,.0f}" if p.tokens_per_s else "-"),
                       ("step time", f"{p.step_time:.3f}s" if p.step_time else "-"),
                       ("ETA", v.duration(p.eta_s) or "-"),
                       ("restart loads", f"step {p.last_checkpoint}" if p.last_checkpoint is not None
                        else "no complete checkpoint: a restart starts from step 0")]
        ckpts = [f"step {c.step:>6}  {v.size(c.size_bytes):>10}  {'complete' if c.complete else 'partial'}"
                 f"{'  ★ restart loads this' if c.restart_target else ''}"
                 for c in view.checkpoints if p and c.run_dir == p.run_dir]
        return screens.DetailScreen(f"job {key} · l for its output", screens.detail_text(
            fields, [("checkpoints", ckpts)]), losses=p.losses if p else None)
    if view_name == "ckpt":
        found = next((c for c in view.checkpoints if v.checkpoint_key(c) == key), None)
        if found is None:
            return None
        return screens.DetailScreen(f"checkpoint step {found.step}", screens.detail_text([
            ("run dir", found.run_dir), ("job", found.job_id), ("step", found.step),
            ("size", v.size(found.size_bytes)), ("complete", found.complete),
            ("written", f"{v.clock(found.mtime)} UTC"),
            ("restart loads it", "yes" if found.restart_target else "no")]))
    if view_name == "events":
        found = next((e for e in view.events if v.event_key(e) == key), None)
        if found is None:
            return None
        return screens.DetailScreen(f"event on {found.get('node')}",
                                    Text(json.dumps(found, indent=2, default=str)))
    return None
