"""Inside a Slurm job: what submitit runs (`run_stage`), the job's own id, and Slurm's view of the job for the
job wrapper (orchestrator/jobside.py JobEnv): restart count, nodes, time left (squeue %L), requeue (scontrol)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orchestrator import jobside, proc


def run_stage(run_dir: str, stage: str) -> None:
    """What submitit runs in the job: the job wrapper, told by `job_environment` what Slurm says of it."""
    rc = jobside.execute(Path(run_dir), stage, slurm_job_id(), job_environment())
    if rc:
        sys.exit(rc)


def slurm_job_id() -> str:
    """This job's id as sbatch gave it: `<array id>_<task>` for a job array's task (SLURM_JOB_ID is then the
    task's own number, which neither our state nor `scontrol release`/`scancel` of the array use)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "unknown")


def job_environment() -> jobside.JobEnv:
    """The job's restart count and nodes from its environment (sbatch(1) OUTPUT ENVIRONMENT VARIABLES), its
    time left from squeue and a requeue by scontrol, so the wrapper can requeue it before the time limit."""
    in_job = bool(os.environ.get("SLURM_JOB_ID"))
    return jobside.JobEnv(restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                          node=os.environ.get("SLURMD_NODENAME"), nodes=os.environ.get("SLURM_JOB_NODELIST"),
                          time_left=_time_left if in_job else None, requeue=_requeue if in_job else None)


def _time_left(job_id: str) -> int | None:
    left = proc.run(["squeue", "-h", "-j", job_id, "-o", "%L"], check=False, timeout=30).stdout.strip()
    return slurm_seconds(left)


def _requeue(job_id: str) -> None:
    proc.run(["scontrol", "requeue", job_id], check=False, timeout=30)


def slurm_seconds(value: str) -> int | None:
    """Seconds in a Slurm duration ([D-]HH:MM:SS, MM:SS); None for UNLIMITED or garbage."""
    days = 0
    if "-" in value:
        head, _, value = value.partition("-")
        if not head.isdigit():
            return None
        days = int(head)
    parts = value.split(":")
    if not parts or not all(p.isdigit() for p in parts):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return days * 86400 + seconds
