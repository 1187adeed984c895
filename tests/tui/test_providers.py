"""The data layer alone, no Textual: the local provider against the real testbed."""

from __future__ import annotations

import pytest

from pitstop.tui.providers import LocalProvider, LocalStreamProvider, ProviderError
from pitstop.waiting import wait_until
from tui_runs import LOSSES, submit_sleeper, write_run

pytestmark = pytest.mark.slurm


@pytest.fixture
def provider(testbed, slurm):
    return LocalProvider(slurm=slurm, state_dir=testbed.layout.agent_root,
                         launch_dir=testbed.layout.jobs_dir)


def test_one_refresh_is_two_slurm_calls_and_shows_a_fenced_node_with_its_reason(slurm, provider):
    slurm.drain("node2", "pitstop: xid 79 gpu1 fell off the bus")
    before = slurm.calls
    view = provider.fetch()
    assert slurm.calls == before + 2
    provider.fetch()
    assert slurm.calls == before + 4
    assert [n.node for n in view.nodes] == ["node1", "node2", "node3", "node4"]
    row = view.node("node2")
    assert "drain" in row.slurm_state and row.reason == "pitstop: xid 79 gpu1 fell off the bus"
    assert row.reason_is_pitstop and row.accelerators_total == 2
    assert "drain" not in view.node("node1").slurm_state


def test_a_job_is_joined_with_its_run_progress_and_checkpoints(testbed, slurm, provider, tmp_path):
    run_dir = write_run(testbed.layout.jobs_dir / "runs" / tmp_path.name)
    job_id = submit_sleeper(slurm, run_dir)
    slurm.wait_for(lambda s: (j := s.job(job_id)) and j.running, 30, what="the job to run")
    view = provider.fetch()
    row = view.job(job_id)
    assert row is not None and row.job.state == "RUNNING"
    progress = row.progress
    assert progress.run_dir == str(run_dir)
    assert (progress.step, progress.max_steps) == (5, 100)
    assert progress.losses == LOSSES and progress.tokens_per_s == 1234.5
    assert progress.eta_s == pytest.approx(95 * 0.5)
    assert progress.last_checkpoint == 2
    checkpoints = [(c.step, c.complete, c.restart_target) for c in view.checkpoints
                   if c.run_dir == str(run_dir)]
    assert checkpoints == [(2, True, True), (4, False, False)]
    text, offset = provider.read_output(row.job.stdout, 0)
    wait_until(lambda: provider.read_output(row.job.stdout, 0)[0].count("\n") >= 3, 10,
               what="the job's output")
    text, offset = provider.read_output(row.job.stdout, 0)
    assert text.splitlines() == ["line 0", "line 1", "line 2"]
    assert provider.read_output(row.job.stdout, offset) == ("", offset)


def test_actions_change_slurm_and_refusals_are_messages(slurm, provider):
    provider.drain("node3", "drained from pitstop tui by test")
    assert slurm.node("node3").drained
    provider.resume("node3")
    assert not slurm.node("node3").drained
    with pytest.raises(ProviderError, match="node9|Invalid|invalid"):
        provider.drain("node9", "x")
    with pytest.raises(ProviderError, match="not a Slurm job id"):
        provider.requeue("12; rm -rf /")


def test_a_bad_override_is_refused_before_anything_is_written(provider):
    names = [r["name"] for r in provider.recipes()]
    assert "llama3-tiny-seq256-cpu-pretrain" in names
    with pytest.raises(ProviderError, match="trainer.max_stepz"):
        provider.preview("llama3-tiny-seq256-cpu-pretrain", ["trainer.max_stepz=3"])
    preview = provider.preview("llama3-tiny-seq256-cpu-pretrain", ["trainer.max_steps=7"])
    assert "#SBATCH" in preview.script_text and "max_steps: 7" in preview.config_text


def test_the_view_process_answers_like_the_local_provider_and_a_dead_one_is_replaced(testbed, slurm):
    slurm.drain("node3", "pitstop: xid 48 gpu0 double-bit ECC error")
    streamed = LocalStreamProvider(slurm=slurm, state_dir=testbed.layout.agent_root)
    try:
        view = streamed.fetch()
        local = LocalProvider(slurm=slurm, state_dir=testbed.layout.agent_root).fetch()
        assert [(n.node, n.slurm_state, n.reason) for n in view.nodes] == \
            [(n.node, n.slurm_state, n.reason) for n in local.nodes]
        # Once the cluster is still (jobs of earlier tests done), a refresh parses nothing.
        wait_until(lambda: streamed.fetch() and streamed._decoder.parsed == 0, 30, what="a still cluster")
        dead = streamed._child
        dead.kill()
        dead.wait()
        fresh = streamed.fetch()
        assert fresh.node("node3").reason == "pitstop: xid 48 gpu0 double-bit ECC error"
        assert streamed._child.pid != dead.pid  # a new child, and a new decoder that parsed it all
        assert streamed._decoder.parsed == len(fresh.nodes) + len(fresh.jobs) + len(fresh.checkpoints) \
            + len(fresh.events)
    finally:
        streamed.close()
    assert streamed._child is None
