"""Our one vocabulary of job states, and the single table that maps Slurm's states onto it."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    NOT_SUBMITTED = "NOT_SUBMITTED"  # planned, no job yet (a submission that stopped midway)
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"  # the scheduler could not tell us; never counts as success

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Queued or running: a job that may still change and must not be resubmitted."""
        return self in (JobState.PENDING, JobState.RUNNING)

    @property
    def ok(self) -> bool:
        return self is JobState.COMPLETED


TERMINAL = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.NODE_FAIL,
     JobState.OUT_OF_MEMORY, JobState.PREEMPTED}
)

# Base state names from squeue(1) "JOB STATE CODES" and sacct(1) "JOB STATE CODES".
# REQUEUED/REQUEUE_* and RESIZING mean the job will run again: it is still active, not finished
# (slurm-pipeline counts REQUEUED as finished, which releases nothing but misreports the run).
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SPECIAL_EXIT": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "NODE_FAIL": JobState.NODE_FAIL,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "PREEMPTED": JobState.PREEMPTED,
}


def from_slurm(raw: str) -> JobState:
    """Map a Slurm state ("CANCELLED by 0", "COMPLETED+", "CA") to ours; anything unrecognised is UNKNOWN."""
    word = raw.strip().split(" ")[0].rstrip("+").upper()
    return SLURM_STATES.get(word, JobState.UNKNOWN)
