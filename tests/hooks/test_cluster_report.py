"""`pitstop check cluster`'s analysis: per-node and per-pair figures and their outliers."""

from __future__ import annotations

from pathlib import Path

from pitstop.hooks.allreduce import bus_factor, round_robin_pairs
from pitstop.hooks.cluster import ClusterJob, analyse, format_report

NODES = ["node1", "node2", "node3", "node4"]


def ranks_with(pair_bw):
    ranks = []
    for rank, name in enumerate(NODES):
        pairs = [{"pair": list(p), "ranks": 2, "busbw_gbs": bw} for p, bw in pair_bw.items() if rank in p]
        ranks.append({"rank": rank, "node": name, "all": {"busbw_gbs": 1.0, "time_us": 10.0}, "pairs": pairs})
    return ranks


def test_round_robin_covers_every_pair_once_without_a_rank_twice_per_round():
    for ranks in (2, 3, 4, 5, 8):
        rounds = round_robin_pairs(ranks)
        pairs = [p for r in rounds for p in r]
        assert sorted(pairs) == sorted((a, b) for a in range(ranks) for b in range(a + 1, ranks))
        for r in rounds:
            members = [x for p in r for x in p]
            assert len(members) == len(set(members))


def test_bus_factor_is_nccl_tests():
    assert bus_factor(2) == 1.0 and bus_factor(8) == 1.75


def test_a_slow_node_is_named_and_its_pairs_do_not_count_as_slow_links():
    bw = {(0, 1): 1.0, (0, 2): 0.1, (0, 3): 1.1, (1, 2): 0.12, (1, 3): 0.9, (2, 3): 0.11}
    report = analyse("7", NODES, ranks_with(bw))
    assert report.slow_nodes == ["node3"] and report.slow_links == [] and not report.ok
    assert {p.a + "-" + p.b for p in report.pairs if p.outlier} == {"node1-node3", "node2-node3", "node3-node4"}
    assert "node3" in format_report(report) and "slow node" in format_report(report)


def test_a_slow_link_between_two_healthy_nodes_is_named():
    bw = {(0, 1): 0.1, (0, 2): 1.0, (0, 3): 1.1, (1, 2): 1.0, (1, 3): 0.9, (2, 3): 1.0}
    report = analyse("7", NODES, ranks_with(bw))
    assert report.slow_nodes == [] and report.slow_links == ["node1-node2"]


def test_even_figures_have_no_outliers_and_missing_ranks_are_errors():
    bw = {p: 1.0 for r in round_robin_pairs(4) for p in r}
    assert analyse("7", NODES, ranks_with(bw)).ok
    report = analyse("7", NODES, ranks_with(bw)[:3])
    assert report.errors == ["no figures from node4"]


def test_rendered_job_script_runs_one_task_per_node():
    script = ClusterJob("node[1-4]", Path("/shared/out"), python="/usr/bin/python3").script()
    assert "#SBATCH --nodes=4" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "srun --kill-on-bad-exit=1 /usr/bin/python3 -m pitstop.hooks.allreduce --out /shared/out --pairs" in script
