"""The one Scheduler protocol and its backends: slurm (submitit), local (detached driver), fake (in memory).
The protocol and shared types are in scheduler/types.py (re-exported here); this module picks the backend."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import PipelineError
from orchestrator.scheduler.types import (
    ACCOUNTED_AS,
    CONTROLLER,
    CONTROLLER_DOWN,
    DEFAULT_MAX_ARRAY_SIZE,
    DEPENDENCY_FAILED,
    DISAGREEMENT,
    NODE_PROBLEM,
    SOURCE,
    AccountingUnavailable,
    ArrayRequest,
    JobInfo,
    Scheduler,
    SubmitRequest,
)
from orchestrator.spec import ClusterProfile

__all__ = ["ACCOUNTED_AS", "CONTROLLER", "CONTROLLER_DOWN", "DEFAULT_MAX_ARRAY_SIZE", "DEPENDENCY_FAILED",
           "DISAGREEMENT", "NODE_PROBLEM", "SOURCE", "AccountingUnavailable", "ArrayRequest", "JobInfo", "Scheduler", "SubmitRequest",
           "for_cluster", "live_jobs", "query_group", "short_id"]


def for_cluster(cluster: ClusterProfile, run_dir: Path) -> Scheduler:
    """Build the backend for a cluster profile; the only place that chooses one."""
    if cluster.scheduler == "local":
        from orchestrator.scheduler.local import LocalScheduler

        return LocalScheduler(run_dir)
    from orchestrator.scheduler.slurm import SlurmScheduler

    return SlurmScheduler(run_dir, cluster)


def query_group(kind: str, run_dir: Path) -> str:
    """Runs whose jobs one backend instance can query together share this key (status batches by it)."""
    if kind == "slurm":
        from orchestrator.scheduler.slurm import query_group as slurm_group

        return slurm_group(run_dir)
    return kind


def short_id(job_id: str) -> str:
    """A job id as a narrow column shows it (the local backend's ids carry the run id)."""
    from orchestrator.scheduler.local import short_id as local_short

    return local_short(job_id)


def live_jobs(scheduler: Scheduler, candidates: list[str]) -> list[str]:
    """Those of candidates still queued or running; all of them when the scheduler cannot say (scancel of a
    finished job is harmless: Scheduler contract 3). Cancel and resume both ask it before scancel."""
    if not candidates:
        return []
    try:
        found = scheduler.query(candidates)
    except PipelineError:
        return candidates
    return [j for j in candidates if j not in found or found[j].state.active]
