"""What the hooks do to a node: drain, resume, replace, or leave an operator's reason alone."""

from __future__ import annotations

import pytest

from pitstop.hooks import fencing
from pitstop.hooks.entry import job_failed, job_gpu_indexes, kill_strays
from pitstop.model import Node


def node(flags=(), reason="", state="IDLE"):
    return Node(name="node1", state=state, flags=list(flags), reason=reason)


QUICK = fencing.quick_reason("prolog", "disk_free /scratch: 1.0GiB free")


@pytest.mark.parametrize("current,failed,action", [
    (node(), True, "drain"),
    (node(), False, "none"),
    (node(["DRAIN"], QUICK), False, "resume"),
    (node(["DRAIN"], QUICK), True, "none"),
    (node(["DRAIN"], "disk swap, back Tuesday -- ops"), False, "none"),
    (node(["DRAIN"], "disk swap, back Tuesday -- ops"), True, "none"),
    (node(["DRAIN"], "pitstop: xid 79 on gpu3"), False, "none"),  # the agent's: needs a full check
    (node(state="DOWN", reason="pitstop: quick check failed (healthcheck): x"), False, "resume"),
])
def test_healthcheck_actions(current, failed, action):
    assert fencing.healthcheck_action(current, failed) == action


def test_prolog_drains_only_when_failing_and_not_already_out():
    assert fencing.prolog_action(node(), True) == "drain"
    assert fencing.prolog_action(node(), False) == "none"
    assert fencing.prolog_action(node(["DRAIN"], "ops"), True) == "none"
    assert fencing.prolog_action(None, True) == "drain"


def test_resume_only_pitstops_nodes_and_escalate_failures_to_replace():
    assert fencing.resume_action(node(["DRAIN"], "pitstop: xid 79"), failed=False) == "resume"
    assert fencing.resume_action(node(["DRAIN"], "pitstop: xid 79"), failed=True) == "replace"
    assert fencing.resume_action(node(["DRAIN"], "ops: cable"), failed=False) == "not-pitstops"


def test_reasons_carry_the_prefix_and_fit_on_one_line():
    assert QUICK.startswith("pitstop: quick check failed (prolog): disk_free")
    long = fencing.replace_reason("x\n" * 500)
    assert long.startswith("pitstop: Action:Replace full check failed:")
    assert len(long) <= fencing.REASON_LIMIT and "\n" not in long


@pytest.mark.parametrize("env,failed", [
    ({"SLURM_JOB_EXIT_CODE2": "0:0", "SLURM_JOB_EXIT_CODE": "0"}, False),
    ({"SLURM_JOB_EXIT_CODE2": "3:0", "SLURM_JOB_EXIT_CODE": "768"}, True),
    ({"SLURM_JOB_EXIT_CODE2": "0:9"}, True),
    ({"SLURM_JOB_EXIT_CODE": "256"}, True),
    ({}, False),
])
def test_epilog_reads_the_jobs_exit(env, failed):
    assert job_failed(env) is failed


def test_epilog_gpu_indexes_and_kills():
    assert job_gpu_indexes({"SLURM_JOB_GPUS": "0,2"}) == [0, 2]
    assert job_gpu_indexes({}) == []
    sent = []

    def fake_kill(pid, sig):
        if pid == 99:
            raise ProcessLookupError
        sent.append((pid, sig))

    assert kill_strays([1234, 99], fake_kill) == [1234] and sent[0][0] == 1234
