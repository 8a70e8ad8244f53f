"""The job wrapper asks its scheduler, not Slurm's commands, how long the job has and how to requeue it (issue 12
item 2): jobside.requeue_before_timeout runs on a JobEnv, which the Slurm backend builds (scheduler/slurm_job.py
job_environment: squeue %L, scontrol requeue).

Here a recorder stands in for squeue/scontrol (no Slurm in unit tests); the child is a real process in its own
session that must get SIGUSR2 before the requeue, as a training program gets the signal to checkpoint. The real
requeue runs in tests/slurm/test_reliability_slurm.py (node loss, retries: 2).
"""

from __future__ import annotations

import io
import subprocess
import time

import pytest

from orchestrator import jobside
from orchestrator.scheduler import slurm_job as slurm


@pytest.fixture
def child():
    proc = subprocess.Popen(["bash", "-c", 'trap "echo usr2; exit 3" USR2; sleep 30 & wait'],
                            stdout=subprocess.PIPE, start_new_session=True)
    time.sleep(0.3)  # the trap is set
    yield proc
    proc.kill()
    proc.wait()
    jobside.REQUEUING.clear()


def test_a_job_near_its_limit_is_signalled_then_requeued_through_its_env(child, monkeypatch):
    monkeypatch.setattr(jobside, "GRACE_S", 2)  # fire 1 s from now: time left 3 s, grace 2 s
    requeued: list[str] = []
    env = jobside.JobEnv(restarts=0, time_left=lambda job_id: 3, requeue=requeued.append)
    log = io.BytesIO()
    timer = jobside.requeue_before_timeout(child, "42", retries=1, log=log, job=env)
    assert timer is not None
    assert child.wait(timeout=10) == 3 and child.stdout.read() == b"usr2\n"  # SIGUSR2 reached the program
    timer.join(timeout=10)
    assert requeued == ["42"] and jobside.REQUEUING.is_set()
    assert b"SIGUSR2 to the stage, then requeue (restart 1 of 1)" in log.getvalue()


@pytest.mark.parametrize("env", [jobside.JobEnv(),  # local: no time limit, no requeue
                                 jobside.JobEnv(restarts=1, time_left=lambda j: 3, requeue=lambda j: None),
                                 jobside.JobEnv(time_left=lambda j: None, requeue=lambda j: None)])
def test_no_requeue_without_a_limit_or_retries_left(child, env):
    assert jobside.requeue_before_timeout(child, "42", retries=1, log=io.BytesIO(), job=env) is None


def test_slurm_builds_the_env_from_its_job_variables(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    monkeypatch.setenv("SLURMD_NODENAME", "dev1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "dev[1-2]")
    env = slurm.job_environment()
    assert (env.restarts, env.node, env.nodes) == (2, "dev1", "dev[1-2]")
    assert env.time_left is not None and env.requeue is not None
    monkeypatch.delenv("SLURM_JOB_ID")
    assert slurm.job_environment().time_left is None  # not inside a Slurm job: nothing to ask


def test_slurm_durations():
    """squeue %L (squeue(1) "time left": days-hours:minutes:seconds)."""
    assert slurm.slurm_seconds("1-02:03:04") == 93784
    assert slurm.slurm_seconds("05:00") == 300
    assert slurm.slurm_seconds("UNLIMITED") is None and slurm.slurm_seconds("") is None
