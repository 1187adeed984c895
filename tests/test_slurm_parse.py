"""The parsers on output captured from the real testbed (Slurm 22.05) and on edge cases."""

import time
from pathlib import Path

import pytest

from pitstop.model import Job
from pitstop.slurm import parse

DATA = Path(__file__).parent / "data" / "slurm-22.05"


def test_nodes_from_format_capture():
    nodes = {n.name: n for n in parse.nodes_from_format((DATA / "sinfo-format.txt").read_text())}
    assert set(nodes) == {"node1", "node2", "node3"}
    assert nodes["node1"].state == "MIXED" and nodes["node1"].cpus_alloc == 1
    assert nodes["node1"].gpus == 2 and nodes["node1"].gpus_used == 1
    drained = nodes["node3"]
    assert drained.drained and not drained.available
    assert drained.reason == 'operator: bad fan "x"; $(true)'
    assert drained.reason_user == "root" and drained.reason_time is not None
    assert not drained.fenced_by_pitstop
    assert nodes["node1"].partitions == ["debug"]


def test_format_and_json_agree_on_nodes():
    from_format = parse.nodes_from_format((DATA / "sinfo-format.txt").read_text())
    from_json = parse.nodes_from_json((DATA / "sinfo.json").read_text())
    for a, b in zip(sorted(from_format, key=lambda n: n.name), sorted(from_json, key=lambda n: n.name)):
        assert (a.name, a.state, a.drained, a.reason, a.cpus, a.gres, a.reason_user) == \
               (b.name, b.state, b.drained, b.reason, b.cpus, b.gres, b.reason_user)


def test_jobs_from_format_capture():
    jobs = {j.job_id: j for j in parse.jobs_from_format((DATA / "squeue-format.txt").read_text())}
    running = jobs["3"]
    assert running.running and running.name == "train llama"
    assert running.nodes == ["node1", "node2"] and running.num_nodes == 2
    assert running.requeue and running.restart_count == 0
    assert running.stdout == "/tmp/pitstop-testbed/jobs/train llama-3.out"  # %x-%j expanded
    assert running.tres_per_node == "gres:gpu:1"
    assert running.start_time and running.submit_time <= running.start_time
    pending = jobs["4"]
    assert pending.pending and pending.nodes == [] and not pending.requeue
    assert pending.time_limit == 600
    assert "DRAINED" in pending.reason
    assert jobs["2"].finished and jobs["2"].batch_host == "node1"


def test_format_and_json_agree_on_jobs():
    from_format = {j.job_id: j for j in parse.jobs_from_format((DATA / "squeue-format.txt").read_text())}
    from_json = {j.job_id: j for j in parse.jobs_from_json((DATA / "squeue.json").read_text())}
    assert set(from_format) == set(from_json)
    for job_id, a in from_format.items():
        b = from_json[job_id]
        assert (a.state, a.nodes, a.name, a.requeue, a.num_nodes) == (b.state, b.nodes, b.name, b.requeue, b.num_nodes)


def test_reservations_capture():
    (resv,) = parse.reservations_from_scontrol((DATA / "scontrol-reservation.txt").read_text())
    assert resv.name == "maint1" and resv.nodes == ["node3"] and "MAINT" in resv.flags
    assert resv.end_time - resv.start_time == 30 * 60
    assert parse.reservations_from_scontrol("No reservations in the system\n") == []


def test_scontrol_job_keeps_values_with_spaces():
    detail = parse.job_from_scontrol((DATA / "scontrol-job.txt").read_text())
    assert detail["JobName"] == "train llama"
    assert detail["StdOut"] == "/tmp/pitstop-testbed/jobs/train llama-3.out"
    assert detail["JobState"] == "RUNNING"


def test_separators_inside_a_value_do_not_shift_columns():
    row = parse.FIELD_SEP.join(["node1", "idle+drain", "2", "0/2/0/2", "gpu:2", "gpu:0", "debug*",
                                "1000", "0", "127.0.0.1", "root(0)", "2026-12-01T08:00:00",
                                f"line one\nline two {parse.FIELD_SEP} tail"]) + parse.RECORD_SEP + "\n"
    (node,) = parse.nodes_from_format(row)
    assert node.reason == f"line one\nline two {parse.FIELD_SEP} tail"
    assert node.flags == ["DRAIN"]


def test_truncated_row_is_an_error():
    with pytest.raises(ValueError, match="expected 13 fields"):
        parse.nodes_from_format("node1\x1fidle\x1e")


@pytest.mark.parametrize("text, base, flags", [
    ("idle", "IDLE", []),
    ("idle+drain", "IDLE", ["DRAIN"]),
    ("down+drain+reboot_issued", "DOWN", ["DRAIN", "REBOOT_ISSUED"]),
    ("drained", "IDLE", ["DRAIN"]),
    ("draining", "MIXED", ["DRAIN"]),
    ("idle*", "IDLE", ["NOT_RESPONDING"]),
    ("down*+fail", "DOWN", ["FAIL", "NOT_RESPONDING"]),
    ("mixed#", "MIXED", ["POWERING_UP"]),
    ("", "UNKNOWN", []),
])
def test_parse_state(text, base, flags):
    assert parse.parse_state(text) == (base, flags)


@pytest.mark.parametrize("text, seconds", [
    ("UNLIMITED", None), ("INVALID", None), ("5", 300), ("05:30", 330), ("1:00:00", 3600),
    ("2-00:00:00", 172800), ("1-12", 129600), ("1-1:30", 91800), ("365-00:00:00", 365 * 86400),
])
def test_parse_duration(text, seconds):
    assert parse.parse_duration(text) == seconds


def test_format_duration_round_trips():
    for seconds in (0, 59, 3600, 90061, 365 * 86400):
        assert parse.parse_duration(parse.format_duration(seconds)) == seconds


def test_parse_time_is_local_time():
    assert parse.parse_time("N/A") is None and parse.parse_time("Unknown") is None
    stamp = parse.parse_time("2026-12-01T08:31:32")
    assert time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stamp)) == "2026-12-01T08:31:32"


def test_output_pattern_expansion():
    job = Job(job_id="42", name="train", user="alice", nodes=["node3", "node4"], batch_host="node3")
    assert parse.expand_output_pattern("/r/%x-%j.out", job) == "/r/train-42.out"
    assert parse.expand_output_pattern("/r/%u/%N/%5j.log", job) == "/r/alice/node3/00042.log"
    assert parse.expand_output_pattern("/r/100%%-%j", job) == "/r/100%-42"


def test_json_numbers_in_newer_shape():
    text = ('{"jobs": [{"job_id": 7, "name": "x", "job_state": ["RUNNING"], "nodes": "n[1-2]", '
            '"time_limit": {"set": true, "infinite": false, "number": 30}, '
            '"restart_cnt": {"set": true, "number": 2}, "requeue": true}]}')
    (job,) = parse.jobs_from_json(text)
    assert job.state == "RUNNING" and job.nodes == ["n1", "n2"] and job.time_limit == 1800
    assert job.restart_count == 2
    nodes = parse.nodes_from_json('{"nodes": [{"name": "n1", "state": ["IDLE", "DRAIN"], "reason": "r"}]}')
    assert nodes[0].drained and nodes[0].state == "IDLE"
