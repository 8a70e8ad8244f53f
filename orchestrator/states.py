"""Our one vocabulary of job states, and the single table that maps Slurm's states onto it."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    NOT_SUBMITTED = "NOT_SUBMITTED"  # planned, no job yet (a submission that stopped midway)
    PENDING = "PENDING"
    HELD = "HELD"  # pending but held (scontrol hold, "launch failed requeued held"): never starts until released
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"  # the scheduler could not tell us; never counts as success
    CACHED = "CACHED"  # not submitted: an earlier run's COMPLETED stage with the same key supplied its outputs

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Queued or running: a job that may still change and must not be resubmitted."""
        return self in (JobState.PENDING, JobState.HELD, JobState.RUNNING)

    @property
    def ok(self) -> bool:
        """The stage's outputs are there: it ran to completion, or they came from an identical earlier stage."""
        return self in (JobState.COMPLETED, JobState.CACHED)


TERMINAL = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.NODE_FAIL,
     JobState.OUT_OF_MEMORY, JobState.PREEMPTED, JobState.CACHED}
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


# Pending reasons of a held job (slurm_protocol_defs.c job_state_reason_string: WAIT_HELD "JobHeldAdmin",
# WAIT_HELD_USER "JobHeldUser"; job_mgr.c sets the state_desc "launch failed requeued held" when a batch launch
# fails after a controller restart and the job is requeued held). REQUEUE_HOLD is the state of `scontrol requeuehold`.
HELD_REASONS = frozenset({"JobHeldAdmin", "JobHeldUser", "launch failed requeued held"})


def is_held(state: JobState, raw: str, reason: str | None) -> bool:
    """A pending job that will not start until someone releases it (scontrol release)."""
    word = raw.strip().split(" ")[0].rstrip("+").upper()
    return state is JobState.PENDING and (word == "REQUEUE_HOLD" or reason in HELD_REASONS
                                          or "held" in (reason or "").lower())  # "job requeued in held state"


def from_slurm(raw: str) -> JobState:
    """Map a Slurm state ("CANCELLED by 0", "COMPLETED+", "CA") to ours; anything unrecognised is UNKNOWN."""
    word = raw.strip().split(" ")[0].rstrip("+").upper()
    return SLURM_STATES.get(word, JobState.UNKNOWN)
