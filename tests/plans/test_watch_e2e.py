"""`plans watch`, `extend` and `cancel` on the real testbed: a reservation deleted by hand
is re-created, an orphan `pitstop-` reservation is removed, a killed and restarted watch
submits nothing twice, an extension checks the calendar, and a cancel undoes the plan."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from pitstop.plans.attach import render_run
from pitstop.plans.book import book
from pitstop.plans.jobs import marker
from pitstop.plans.store import PlanRun, PlanStore
from pitstop.slurm.parse import format_time
from pitstop.waiting import wait_until

from .conftest import hold_nodes, wait_running

pytestmark = pytest.mark.slurm

RECIPE = "llama3-tiny-seq256-cpu-pretrain"


def _segments(*spans_s, nodes=1):
    now = time.time()
    return {"segments": [{"start": now + a, "end": now + b, "nodes": nodes} for a, b in spans_s]}


def test_watch_recreates_a_deleted_reservation_and_removes_only_orphans(slurm, plans_cli):
    plan = book(slurm, PlanStore(plans_cli.state_dir), "w", _segments((300, 480)))
    booked = slurm.reservation("pitstop-w-s1")
    slurm.delete_reservation("pitstop-w-s1")
    slurm.create_reservation("pitstop-orphan-s1", start="now+10minutes", duration="1", node_count=1)
    slurm.create_reservation("someone-else", start="now+10minutes", duration="1", node_count=1)

    out = plans_cli.run("watch", "--once").stdout
    assert "w: re-created missing reservation pitstop-w-s1" in out
    assert "deleted orphan reservation pitstop-orphan-s1" in out
    again = slurm.reservation("pitstop-w-s1")
    assert (again.start_time, again.end_time, again.node_count) == \
        (booked.start_time, booked.end_time, plan.segments[0].nodes)
    assert slurm.reservation("pitstop-orphan-s1") is None and slurm.reservation("someone-else")
    assert plans_cli.run("watch", "--once").stdout == ""  # nothing left to do


def _watch(plans_cli) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pitstop", "plans", "watch", "--interval", "1"],
                            env=plans_cli.env, cwd=plans_cli.testbed.layout.jobs_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_killed_and_restarted_watch_submits_each_segments_job_once(testbed, slurm, plans_cli):
    store = PlanStore(plans_cli.state_dir)
    plan = book(slurm, store, "x", _segments((240, 360), (420, 540)))
    run_dir = testbed.layout.jobs_dir / "plan-x"
    render_run(RECIPE, ["cluster.nodes=1"], run_dir, testbed.layout.jobs_dir)
    # As if `plans attach` had stopped after writing the run and before any sbatch.
    plan.run = PlanRun(RECIPE, ["cluster.nodes=1"], str(run_dir), str(testbed.layout.jobs_dir), 60.0)
    store.save(plan)
    path = store.path("x")

    def job_ids():
        return [s["job_id"] for s in json.loads(path.read_text())["segments"]]

    first = _watch(plans_cli)
    try:
        wait_until(lambda: all(job_ids()), 60, what="the watch to submit both segments' jobs")
    finally:
        first.kill()
        first.wait(10)
    submitted = job_ids()
    # Killed between sbatch and the plan file's write: the file has lost the second job.
    data = json.loads(path.read_text())
    data["segments"][1]["job_id"] = None
    path.write_text(json.dumps(data))

    second = _watch(plans_cli)
    try:
        wait_until(lambda: all(job_ids()), 60, what="the restarted watch to find the second job")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, second.stderr.read()
    assert job_ids() == submitted
    plan = store.load("x")
    tagged = [j for j in slurm.jobs() if j.comment.startswith("pitstop-plan:x:")]
    assert sorted(j.job_id for j in tagged) == sorted(submitted)
    assert {j.comment for j in tagged} == {marker(plan, s) for s in plan.segments}
    assert [j.reservation for j in sorted(tagged, key=lambda j: j.comment)] == ["pitstop-x-s1", "pitstop-x-s2"]
    assert f"afterany:{submitted[0]}" in slurm.job_details(submitted[1])["Dependency"]

    out = plans_cli.run("cancel", "x")
    assert "plan x cancelled" in out.stdout
    assert [r for r in slurm.reservations() if r.name.startswith("pitstop-x-")] == []
    assert all(slurm.job(j).state == "CANCELLED" for j in submitted)
    assert plans_cli.json("status", "x")["state"] == "Cancelled"


def test_extend_moves_the_end_only_while_the_nodes_are_free(slurm, plans_cli):
    plan = book(slurm, PlanStore(plans_cli.state_dir), "e", _segments((300, 420), nodes=4))
    end = plan.segments[0].end
    plans_cli.run("extend", "e", "--by", "2m")
    assert slurm.reservation("pitstop-e-s1").end_time == end + 120
    slurm.create_reservation("after", start=format_time(end + 180), duration="2", node_count=1)
    proc = plans_cli.run("extend", "e", "--by", "5m", ok=False)
    assert proc.returncode != 0 and "not free until then" in proc.stderr
    assert slurm.reservation("pitstop-e-s1").end_time == end + 120



def test_watch_cuts_a_late_jobs_limit_and_marks_a_failed_run(testbed, slurm, plans_cli):
    store = PlanStore(plans_cli.state_dir)
    plan = book(slurm, store, "late", _segments((0, 300), nodes=2))
    job = wait_running(slurm, hold_nodes(slurm, testbed, 2, 10, "--reservation=pitstop-late-s1"))
    # The plan's job, with a limit that runs past its segment (as after a requeue mid-segment).
    plan.run = PlanRun(RECIPE, [], str(testbed.layout.jobs_dir / "plan-late"), str(testbed.layout.jobs_dir), 60.0)
    plan.segments[0].job_id = job.job_id
    store.save(plan)
    out = plans_cli.run("watch", "--once").stdout
    minutes = int((plan.segments[0].end - 60 - job.start_time) // 60)
    assert f"late: s1: cut job {job.job_id}'s time limit to {minutes} min" in out
    assert slurm.job(job.job_id).time_limit == minutes * 60
    slurm.cancel(job.job_id)

    failing = testbed.layout.jobs_dir / "fail.sh"
    failing.write_text("#!/bin/bash\nexit 3\n")
    failing.chmod(0o755)
    broken = slurm.submit(failing, args=["--nodes=1", "--reservation=pitstop-late-s1", "--no-requeue",
                                         f"--output={testbed.layout.jobs_dir}/fail-%j.out"],
                          cwd=testbed.layout.jobs_dir)
    slurm.wait_for(lambda s: (j := s.job(broken)) and j.finished, 30, what="the failing job to end")
    plan = store.load("late")
    plan.segments[0].job_id = broken
    store.save(plan)
    out = plans_cli.run("watch", "--once").stdout
    assert f"late: failed: s1: job {broken} ended FAILED" in out
    assert plans_cli.json("status", "late")["state"] == "Failed"
