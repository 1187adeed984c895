"""The app driven from the keyboard (Textual's Pilot) against the real testbed: what the
Nodes and Jobs views show, and drain, resume, requeue and launch changing Slurm."""

from __future__ import annotations

import pytest

from pitstop.testbed.config import free_port_block
from pitstop.tui.app import PitstopApp
from pitstop.tui.providers import LocalProvider
from tui_pilot import goto, pilot_test, message, row_text, select, status, wait_for
from tui_runs import submit_sleeper, write_run

pytestmark = pytest.mark.slurm

SIZE = (160, 45)
RECIPE = "llama3-tiny-seq256-cpu-pretrain"
TINY = ["cluster.nodes=1", "trainer.max_steps=30", "trainer.checkpoint.interval=10",
        "model.dim=64", "model.n_layers=2", "model.ffn_dim=172", "model.n_heads=4",
        "model.n_kv_heads=2", "data.seq_len=64", "model.max_seq_len=64", "data.micro_batch_size=4",
        "schedule.warmup_steps=5", "cluster.signal_seconds=10", "cluster.time=00:10:00"]


def make_app(testbed, slurm, readonly=False) -> PitstopApp:
    provider = LocalProvider(slurm=slurm, state_dir=testbed.layout.agent_root,
                             launch_dir=testbed.layout.jobs_dir)
    return PitstopApp(provider, readonly=readonly, interval=0.3)


@pilot_test
async def test_a_fenced_node_shows_with_its_reason_and_each_refresh_is_two_slurm_calls(testbed, slurm):
    slurm.drain("node2", "pitstop: xid 79 gpu1 GPU has fallen off the bus")
    app = make_app(testbed, slurm)
    async with app.run_test(size=SIZE) as pilot:
        row = await wait_for(pilot, lambda: row_text(app, "nodes", "node2"), what="node2's row")
        assert "drain" in row and "pitstop: xid 79 gpu1 GPU has fallen off the bus" in row
        assert "drain" not in row_text(app, "nodes", "node1")
        assert "4 nodes, 1 unavailable" in status(app) and "refreshed" in status(app)
        app.interval = 3600  # from now on only ctrl+r refreshes, so every Slurm call is counted
        await wait_for(pilot, lambda: not app.workers, what="the refresh in flight to end")
        for _ in range(3):
            refreshes, calls = app.refreshes, slurm.calls
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.refreshes == refreshes + 1, what="a refresh")
            assert slurm.calls == calls + 2


@pilot_test
async def test_drain_and_resume_from_the_keyboard_change_slurm(testbed, slurm):
    app = make_app(testbed, slurm)
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, "nodes", "node3")
        await pilot.press("d")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", 5, what="the confirmation")
        await pilot.press("enter")
        node = await wait_for(pilot, lambda: (n := slurm.node("node3")) and n.drained and n,
                              what="Slurm to drain node3")
        assert node.reason == "drained from pitstop tui by root"
        await wait_for(pilot, lambda: "drain" in (row_text(app, "nodes", "node3") or ""),
                       what="the Nodes view to show node3 drained")
        assert "node3 drained" in message(app)
        await pilot.press("r")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", 5, what="the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: not slurm.node("node3").drained, what="Slurm to resume node3")
        await wait_for(pilot, lambda: "drain" not in (row_text(app, "nodes", "node3") or "drain"),
                       what="the Nodes view to show node3 resumed")


@pilot_test
async def test_a_cancelled_confirmation_changes_nothing(testbed, slurm):
    app = make_app(testbed, slurm)
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, "nodes", "node1")
        await pilot.press("d")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", 5, what="the confirmation")
        await pilot.press("escape")
        await wait_for(pilot, lambda: "not done" in message(app), 5, what="the refusal")
        assert not slurm.node("node1").drained


@pilot_test
async def test_requeue_from_the_keyboard_restarts_the_job(testbed, slurm, tmp_path):
    run_dir = write_run(testbed.layout.jobs_dir / "runs" / tmp_path.name)
    job_id = submit_sleeper(slurm, run_dir)
    slurm.wait_for(lambda s: (j := s.job(job_id)) and j.running, 30, what="the job to run")
    app = make_app(testbed, slurm)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, "jobs")
        row = await wait_for(pilot, lambda: row_text(app, "jobs", job_id), what="the job's row")
        assert "RUNNING" in row and "5/100" in row and "step 2" in row
        await select(pilot, "jobs", job_id)
        await pilot.press("l")
        log = await wait_for(pilot, lambda: app.screen.query("Log") and app.screen.query_one("Log"), 5,
                             what="the job's output")
        await wait_for(pilot, lambda: log.lines[:3] == ["line 0", "line 1", "line 2"], 15,
                       what="the job's output lines")
        await pilot.press("escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MainScreen", 5, what="back to Jobs")
        await pilot.press("R")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", 5, what="the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: (j := slurm.job(job_id)) and j.restart_count >= 1,
                       what="Slurm to requeue the job")
        assert f"job {job_id} requeued" in message(app)
        await pilot.press("c")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", 5, what="the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: (j := slurm.job(job_id)) is None or j.state == "CANCELLED",
                       what="Slurm to cancel the job")


@pilot_test
async def test_readonly_refuses_every_change(testbed, slurm, tmp_path):
    run_dir = write_run(testbed.layout.jobs_dir / "runs" / tmp_path.name)
    job_id = submit_sleeper(slurm, run_dir)
    app = make_app(testbed, slurm, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "READ-ONLY" in status(app), 10, what="the read-only mark")
        await select(pilot, "nodes", "node1")
        for key, action in (("d", "drain"), ("r", "resume")):
            await pilot.press(key)
            assert f"read-only: {action} is disabled" in message(app)
            assert type(app.screen).__name__ == "MainScreen"
        await goto(pilot, "jobs")
        await select(pilot, "jobs", job_id)
        for key, action in (("R", "requeue"), ("c", "cancel")):
            await pilot.press(key)
            assert f"read-only: {action} is disabled" in message(app)
            assert type(app.screen).__name__ == "MainScreen"
        await goto(pilot, "recipes")
        await pilot.press("L")
        assert "read-only: launch is disabled" in message(app)
    assert not slurm.node("node1").drained
    job = slurm.job(job_id)
    assert job.restart_count == 0 and not job.finished


@pilot_test
async def test_a_recipe_launched_from_the_recipes_view_runs_and_shows_progress_in_jobs(testbed, slurm):
    overrides = " ".join(TINY + [f"run.root={testbed.layout.jobs_dir / 'runs'}",
                                 f"cluster.rdzv_port={free_port_block(1)}"])
    app = make_app(testbed, slurm)
    async with app.run_test(size=SIZE) as pilot:
        await goto(pilot, "recipes")
        await select(pilot, "recipes", RECIPE)
        await pilot.press("L")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "LaunchScreen", 5, what="the launch form")
        launch = app.screen
        await pilot.press("x", "=", "1", "enter")
        await wait_for(pilot, lambda: "x=1" in str(launch.query_one("#launch-status").render()),
                       10, what="the override to be refused")
        await pilot.press("ctrl+s")
        assert "validate first" in str(launch.query_one("#launch-status").render())
        # The long line of overrides is pasted, not typed key by key (400 presses took ~15 s).
        launch.query_one("#overrides").value = overrides
        await pilot.press("enter")
        await wait_for(pilot, lambda: "valid" in str(launch.query_one("#launch-status").render()),
                       20, what="the preview")
        preview = str(launch.query_one("#launch-preview").render())
        assert "#SBATCH" in preview and "max_steps: 30" in preview
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", 5, what="the confirmation")
        await pilot.press("y")
        said = await wait_for(pilot, lambda: "submitted job" in message(app) and message(app), 30,
                              what="the submission")
        job_id = said.split("submitted job ")[1].split()[0]
        assert app.main.view_name == "jobs"
        assert slurm.job(job_id) is not None
        await wait_for(pilot, lambda: row_text(app, "jobs", job_id), 10, what="the job in Jobs")
        row = await wait_for(pilot, lambda: (r := row_text(app, "jobs", job_id)) and "/30" in r
                             and not r.split("/30")[0].endswith(" 0") and r, 150,
                             what="the job's progress in Jobs")
        assert RECIPE[:8] in row or "llama3" in row
        slurm.cancel(job_id)


@pilot_test
async def test_the_plans_screen_draws_a_booked_plan_with_its_countdown(testbed, slurm, tmp_path):
    """`:plans` on a plan booked on the testbed: its state, the countdown to its start, the
    reservation on its nodes and its segment on the plan row, read through the provider."""
    import time

    from pitstop.plans.book import book
    from pitstop.plans.store import PlanStore
    from pitstop.tui.screens import PlansScreen

    start = time.time() + 600
    plan = book(slurm, PlanStore(testbed.layout.agent_root), "tuiplan",
                {"segments": [{"start": start, "end": start + 600, "nodes": 2}]})
    try:
        app = make_app(testbed, slurm)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: row_text(app, "nodes", "node1"), what="the first refresh")
            await pilot.press("colon")
            for char in "plans":
                await pilot.press(char)
            await pilot.press("enter")
            screen = await wait_for(pilot, lambda: isinstance(app.screen, PlansScreen) and app.screen,
                                    what="the Plans screen")
            body = await wait_for(pilot, lambda: "tuiplan" in (t := str(screen.query_one("#plans-body").render()))
                                  and t, what="the plan drawn")
            assert "Scheduled" in body and "start of segment 1 in" in body
            lines = body.splitlines()
            reserved = [line for line in lines if line.startswith("node") and "#" in line]
            assert len(reserved) == 2  # NodeCnt=2: Slurm picked two nodes for the reservation
            assert any(line.startswith("plan") and "S" in line for line in lines)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, PlansScreen), what="back to the views")
    finally:
        for segment in plan.segments:
            slurm.delete_reservation(segment.reservation)
        PlanStore(testbed.layout.agent_root).path("tuiplan").unlink(missing_ok=True)
