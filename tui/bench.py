"""`python -m pitstop.tui.bench`: how the TUI holds up on a big cluster.

Prints figures, never passes or fails: for a recorded cluster (4,096 nodes × 8 GPUs and
2,000 jobs by default) the refresh time split into parse (the JSON an SSH refresh
receives, into a ClusterView), diff (rows by key into the tables) and render (the next
frame), p50 and p99 over the refreshes; key-press-to-screen latency; and RSS.
Targets from issue #6: refresh p99 ≤ 100 ms, key press ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import time

from pitstop.health_view import NodeHealth
from pitstop.model import Job
from pitstop.tui.data import ClusterView, JobRow, RunProgress
from pitstop.tui.providers import Provider

T0 = 1764580000.0


def recorded_cluster(nodes: int, gpus: int, jobs: int, seed: int = 6) -> dict:
    rng = random.Random(seed)
    names = [f"gpu-{i:05d}" for i in range(1, nodes + 1)]
    node_rows = []
    for name in names:
        fenced = rng.random() < 0.01
        node_rows.append(NodeHealth(
            name, "idle+drain" if fenced else "allocated", "FENCED" if fenced else "OK",
            fence_class="reboot" if fenced else None,
            reason="pitstop: xid 79 gpu3 GPU has fallen off the bus" if fenced else "",
            reason_is_pitstop=fenced, accelerators_healthy=gpus - fenced, accelerators_total=gpus,
            agent_updated_at=T0, agent_stale=False))
    job_rows = []
    per_job = max(1, nodes // jobs)
    for index in range(jobs):
        job_nodes = names[index * per_job:(index + 1) * per_job] if index * per_job < nodes else []
        job = Job(str(1000 + index), name=f"run-{index}", user="alice", state="RUNNING",
                  nodes=job_nodes, num_nodes=len(job_nodes), stdout=f"/shared/runs/run-{index}/slurm.out")
        progress = RunProgress(f"/shared/runs/run-{index}", step=rng.randint(1, 9000), max_steps=10000,
                               losses=[rng.uniform(2, 4) for _ in range(12)], loss=2.5,
                               tokens_per_s=rng.uniform(1e5, 1e6), step_time=0.4, eta_s=600.0,
                               last_checkpoint=1000)
        job_rows.append(JobRow(job, progress))
    return ClusterView(taken_at=T0, nodes=node_rows, jobs=job_rows, source="bench").to_dict()


def next_refresh(data: dict, rng: random.Random, tick: int) -> str:
    """The next refresh's JSON: time moves, steps advance, a few nodes change state."""
    data["taken_at"] = T0 + tick
    for row in rng.sample(data["jobs"], k=min(200, len(data["jobs"]))):
        row["progress"]["step"] += 1
        row["progress"]["losses"] = row["progress"]["losses"][1:] + [rng.uniform(2, 3)]
    for node in rng.sample(data["nodes"], k=min(8, len(data["nodes"]))):
        node["slurm_state"] = "mixed" if node["slurm_state"] == "allocated" else "allocated"
    return json.dumps(data)


class _Idle(Provider):
    """The bench feeds views itself; the app's own poll sees an empty cluster."""

    label = "bench"

    def fetch(self) -> ClusterView:
        return ClusterView(taken_at=T0)

    def recipes(self) -> list:
        return []


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


async def run(nodes: int, gpus: int, jobs: int, refreshes: int, keys: int) -> dict:
    from pitstop.tui import views
    from pitstop.tui.app import PitstopApp

    rng = random.Random(1)
    data = recorded_cluster(nodes, gpus, jobs)
    app = PitstopApp(_Idle(), interval=3600)
    parse_ms, diff_ms, render_ms, total_ms, key_ms = [], [], [], [], []
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        # What Pilot itself costs to wait for an idle screen, measured with nothing to do
        # and subtracted, so the figures are the app's.
        idle = []
        for _ in range(10):
            start = time.perf_counter()
            await pilot.pause()
            idle.append((time.perf_counter() - start) * 1000)
        baseline = statistics.median(idle)
        for tick in range(refreshes):
            text = next_refresh(data, rng, tick)
            start = time.perf_counter()
            view = ClusterView.from_dict(json.loads(text))
            parsed = time.perf_counter()
            app.apply_view(view)
            diffed = time.perf_counter()
            await pilot.pause()
            rendered = time.perf_counter()
            parse_ms.append((parsed - start) * 1000)
            diff_ms.append((diffed - parsed) * 1000)
            render_ms.append(max(0.0, (rendered - diffed) * 1000 - baseline))
            total_ms.append(max(0.0, (rendered - start) * 1000 - baseline))
        table = app.main.table("nodes")
        for _ in range(keys):
            before = table.cursor_row
            start = time.perf_counter()
            await pilot.press("down")
            await pilot.pause()
            key_ms.append(max(0.0, (time.perf_counter() - start) * 1000 - 2 * baseline))
            assert table.cursor_row == before + 1
        assert len(table.signatures) == nodes and len(views.job_rows(view)) == jobs
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"nodes": nodes, "gpus_per_node": gpus, "jobs": jobs, "refreshes": refreshes,
            "parse_ms": _summary(parse_ms), "diff_ms": _summary(diff_ms), "render_ms": _summary(render_ms),
            "refresh_ms": _summary(total_ms), "key_press_ms": _summary(key_ms), "max_rss_mib": round(rss_mib, 1),
            "pilot_idle_wait_ms": round(baseline, 2)}


def _summary(values: list[float]) -> dict:
    return {"p50": round(statistics.median(values), 2), "p99": round(percentile(values, 0.99), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pitstop.tui.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4096)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--refreshes", type=int, default=30)
    parser.add_argument("--keys", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.nodes, args.gpus, args.jobs, args.refreshes, args.keys))
    if args.json:
        print(json.dumps(figures))
        return
    print(f"recorded cluster: {figures['nodes']} nodes x {figures['gpus_per_node']} GPUs, "
          f"{figures['jobs']} jobs, {figures['refreshes']} refreshes")
    for key in ("parse_ms", "diff_ms", "render_ms", "refresh_ms", "key_press_ms"):
        print(f"  {key:<13} p50 {figures[key]['p50']:>8.2f}   p99 {figures[key]['p99']:>8.2f}")
    print(f"  max RSS       {figures['max_rss_mib']:.1f} MiB")
    print(f"  (Pilot's own idle wait, {figures['pilot_idle_wait_ms']:.1f} ms a pause, is subtracted "
          "from render and key press)")
    print("  targets: refresh p99 <= 100 ms, key press <= 50 ms")


if __name__ == "__main__":
    main()
