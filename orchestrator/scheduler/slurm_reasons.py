"""What Slurm's Reason field means for a pipeline user: the Slurm backend (and the fake that stands in for it)
turns squeue/sacct's reason codes into the NOTE status shows. Slurm keeps a job's last pending reason after the
job has moved on (squeue(1) "REASON" / sacct "Reason"), so most of this is knowing when a code is stale."""

from __future__ import annotations

import dataclasses

from orchestrator.scheduler.types import DEPENDENCY_FAILED, JobInfo
from orchestrator.states import JobState

# Pending reasons a cancelled job may still carry: they say nothing about who cancelled it (status decides that)
STALE_PENDING_REASONS = frozenset({None, "", "Dependency", "JobHeldUser", "JobHeldAdmin", "Priority", "Resources",
                                   "BeginTime", "None"})


def explain(info: JobInfo, job_id: str) -> str | None:
    """The note for one job, or None where Slurm's reason code no longer explains anything."""
    if info.state.ok or info.state is JobState.RUNNING:
        return None  # a running job's Reason is the last pending one (e.g. BeginTime): stale, not news
    if info.state is JobState.CANCELLED and info.reason in ("Dependency", "DependencyNeverSatisfied"):
        return DEPENDENCY_FAILED
    if info.state is JobState.CANCELLED and info.reason in STALE_PENDING_REASONS:
        return None
    if info.state is JobState.PENDING and info.reason == "Dependency":
        return "waiting for its dependencies"
    if info.state is JobState.PENDING and info.reason == "BeginTime":
        return "requeued (node failure or preemption); Slurm holds it briefly before it runs again"
    if info.state is JobState.PENDING and info.restarts and info.reason is None:
        return "requeued (node failure or preemption); waiting to run again"  # the second before BeginTime is set
    if info.state is JobState.HELD:
        return (f"held by Slurm ({info.reason or 'held'}); release it: scontrol release {job_id} "
                "(or pipeline submit --resume RUN)")
    return info.reason


def explained(info: JobInfo, job_id: str) -> JobInfo:
    return dataclasses.replace(info, note=explain(info, job_id))
