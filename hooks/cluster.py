"""`pitstop check cluster`: all-reduce bandwidth over a node set, as a real Slurm job.

A node can pass every local check and still be the one that slows a 512-GPU job: a bad
NIC, a flapping link, a misconfigured switch port. The way people find it is
nccl-tests over all nodes and then over pairs. This module renders one sbatch script
(one task per node, `srun` starting `pitstop.hooks.allreduce` in pairs mode), submits it
through the Slurm client, reads the per-rank JSON files the job writes, and names the
outliers: a node whose median pair bandwidth is far below the median of all nodes, and a
link (pair) far below the median of all pairs that no slow node explains.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pitstop.slurm import Slurm
from pitstop.slurm.hostlist import expand

# A node or link is an outlier below this share of the median.
OUTLIER_RATIO = 0.5


@dataclass(frozen=True)
class ClusterJob:
    nodelist: str
    out_dir: Path
    size_bytes: int = 16 << 20
    iterations: int = 10
    partition: str | None = None
    time_limit_min: int = 15
    python: str = sys.executable

    @property
    def nodes(self) -> list[str]:
        return expand(self.nodelist)

    def script(self) -> str:
        """The sbatch script; `srun` inside it is Slurm's own contract with a batch job."""
        directives = ["--job-name=pitstop-check-cluster", f"--nodelist={self.nodelist}",
                      f"--nodes={len(self.nodes)}", "--ntasks-per-node=1",
                      f"--time={self.time_limit_min}", f"--output={self.out_dir / 'job.out'}"]
        if self.partition:
            directives.append(f"--partition={self.partition}")
        worker = [self.python, "-m", "pitstop.hooks.allreduce", "--out", str(self.out_dir),
                  "--pairs", "--size-bytes", str(self.size_bytes), "--iterations", str(self.iterations)]
        lines = ["#!/bin/bash", "# Rendered by `pitstop check cluster`.",
                 *(f"#SBATCH {d}" for d in directives), "set -euo pipefail",
                 "srun --kill-on-bad-exit=1 " + " ".join(shlex.quote(w) for w in worker), ""]
        return "\n".join(lines)


@dataclass
class PairFigure:
    a: str
    b: str
    busbw_gbs: float
    outlier: bool = False


@dataclass
class NodeFigure:
    node: str
    median_pair_busbw_gbs: float | None
    all_time_us: float | None = None
    outlier: bool = False


@dataclass
class ClusterReport:
    job_id: str
    nodes: list[str]
    all_busbw_gbs: float | None
    per_node: list[NodeFigure] = field(default_factory=list)
    pairs: list[PairFigure] = field(default_factory=list)
    slow_nodes: list[str] = field(default_factory=list)
    slow_links: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.slow_nodes or self.slow_links or self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def read_rank_files(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("rank-*.json"))]


def analyse(job_id: str, nodes: list[str], ranks: list[dict], ratio: float = OUTLIER_RATIO) -> ClusterReport:
    """Per-node and per-pair figures from the ranks' files, with the outliers marked."""
    by_rank = {r["rank"]: r for r in ranks}
    report = ClusterReport(job_id, nodes, None)
    missing = [n for i, n in enumerate(nodes) if i not in by_rank]
    if missing:
        report.errors.append(f"no figures from {', '.join(missing)}")
    if 0 in by_rank:
        report.all_busbw_gbs = by_rank[0]["all"]["busbw_gbs"]
    name_of = {rank: r.get("node", nodes[rank] if rank < len(nodes) else str(rank)) for rank, r in by_rank.items()}
    seen = set()
    for rank, data in sorted(by_rank.items()):
        for pair in data.get("pairs", []):
            key = tuple(pair["pair"])
            if key in seen:
                continue
            seen.add(key)
            report.pairs.append(PairFigure(name_of.get(key[0], str(key[0])), name_of.get(key[1], str(key[1])),
                                           pair["busbw_gbs"]))
    for rank, data in sorted(by_rank.items()):
        name = name_of[rank]
        mine = [p.busbw_gbs for p in report.pairs if name in (p.a, p.b)]
        report.per_node.append(NodeFigure(name, statistics.median(mine) if mine else None,
                                          data["all"].get("time_us")))
    node_figures = [n.median_pair_busbw_gbs for n in report.per_node if n.median_pair_busbw_gbs is not None]
    if len(node_figures) >= 3:
        typical = statistics.median(node_figures)
        for figure in report.per_node:
            if figure.median_pair_busbw_gbs is not None and figure.median_pair_busbw_gbs < ratio * typical:
                figure.outlier = True
                report.slow_nodes.append(figure.node)
    if len(report.pairs) >= 3:
        typical_pair = statistics.median(p.busbw_gbs for p in report.pairs)
        for pair in report.pairs:
            if pair.busbw_gbs < ratio * typical_pair:
                pair.outlier = True
                if pair.a not in report.slow_nodes and pair.b not in report.slow_nodes:
                    report.slow_links.append(f"{pair.a}-{pair.b}")
    return report


def run_cluster_check(slurm: Slurm, job: ClusterJob, timeout: float = 600.0) -> ClusterReport:
    job.out_dir.mkdir(parents=True, exist_ok=True)
    for stale in job.out_dir.glob("rank-*.json"):
        stale.unlink()
    script = job.out_dir / "check-cluster.sbatch"
    script.write_text(job.script())
    job_id = slurm.submit(script, cwd=job.out_dir)
    final = slurm.wait_for(lambda s: (j := s.job(job_id)) is not None and j.finished and j, timeout,
                           interval=0.5, what=f"cluster check job {job_id} to finish")
    report = analyse(job_id, job.nodes, read_rank_files(job.out_dir))
    if final.state != "COMPLETED":
        tail = (job.out_dir / "job.out").read_text(errors="replace")[-400:] if (job.out_dir / "job.out").exists() else ""
        report.errors.append(f"job {job_id} ended {final.state}: {tail.strip()}")
    return report


def format_report(report: ClusterReport) -> str:
    lines = [f"cluster check job {report.job_id} on {len(report.nodes)} nodes: "
             + ("ok" if report.ok else "PROBLEMS")]
    if report.all_busbw_gbs is not None:
        lines.append(f"all nodes: busbw {report.all_busbw_gbs:.3f} GB/s")
    lines.append("per node (median busbw of its pairs):")
    for n in report.per_node:
        figure = f"{n.median_pair_busbw_gbs:.3f} GB/s" if n.median_pair_busbw_gbs is not None else "-"
        lines.append(f"  {n.node:<12} {figure:>14}" + ("  <-- slow node" if n.outlier else ""))
    lines.append("per pair:")
    for p in report.pairs:
        lines.append(f"  {p.a + '-' + p.b:<24} {p.busbw_gbs:>10.3f} GB/s" + ("  <-- slow" if p.outlier else ""))
    for error in report.errors:
        lines.append(f"error: {error}")
    if report.slow_nodes:
        lines.append(f"slow nodes: {', '.join(report.slow_nodes)}")
    if report.slow_links:
        lines.append(f"slow links: {', '.join(report.slow_links)}")
    return "\n".join(lines)
