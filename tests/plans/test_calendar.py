"""The calendar and the search for offerings, on hand-made clusters."""

from pitstop.model import ClusterSnapshot, Job, Node, Reservation
from pitstop.plans.calendar import calendar_from, earliest_split, earliest_window, search

NOW = 1_000_000.0


def _cluster(jobs=(), down=()):
    nodes = [Node(f"node{i}", "DOWN" if f"node{i}" in down else "IDLE", partitions=["debug"])
             for i in range(1, 5)]
    return ClusterSnapshot(nodes=nodes, jobs=list(jobs))


def test_a_window_starts_when_the_running_job_ends():
    job = Job("7", state="RUNNING", nodes=["node1", "node2"], start_time=NOW - 60, time_limit=360)
    calendar = calendar_from(_cluster([job]), [], NOW)
    offer = earliest_window(calendar, nodes=3, duration=360, after=NOW)
    # Slurm still counts the nodes busy in the second the time limit ends.
    assert offer.start == NOW + 301 and offer.end == NOW + 661 and len(offer.segments) == 1


def test_a_split_offering_starts_earlier_with_a_gap():
    job = Job("7", state="RUNNING", nodes=["node1", "node2"], start_time=NOW - 60, time_limit=360)
    resv = Reservation("maint", start_time=NOW + 120, end_time=NOW + 300, nodes=["node3", "node4"])
    calendar = calendar_from(_cluster([job]), [resv], NOW)
    # Two free nodes now until the reservation; four from the job's end.
    offers = search(calendar, nodes=2, duration=360, after=NOW, max_segments=2, min_segment=60)
    split = next(o for o in offers if len(o.segments) == 2)
    assert [(s.start - NOW, s.end - NOW) for s in split.segments] == [(0, 120), (300, 540)]
    assert split.gaps == [180]
    single = next(o for o in offers if len(o.segments) == 1)
    assert single.start == NOW + 300
    assert offers[0] is split or offers[0].end <= split.end


def test_down_and_drained_nodes_do_not_count():
    calendar = calendar_from(_cluster(down={"node4"}), [], NOW)
    assert earliest_window(calendar, nodes=4, duration=60, after=NOW) is None
    assert earliest_window(calendar, nodes=3, duration=60, after=NOW).start == NOW


def test_before_bounds_the_search_and_unlimited_jobs_never_end():
    job = Job("8", state="RUNNING", nodes=["node1"], start_time=NOW, time_limit=None)
    calendar = calendar_from(_cluster([job]), [], NOW)
    assert earliest_window(calendar, nodes=4, duration=60, after=NOW) is None
    assert earliest_window(calendar, nodes=3, duration=600, after=NOW, before=NOW + 300) is None
    assert earliest_split(calendar, nodes=3, duration=60, after=NOW, max_segments=1) is None
