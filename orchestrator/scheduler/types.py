"""The Scheduler protocol and the types every backend and its callers share (no backend in here: the backends
import this module, and scheduler/__init__ picks among them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from orchestrator.errors import SchedulerError
from orchestrator.spec import Resources
from orchestrator.states import JobState

# JobInfo.extra keys a backend may set (the Slurm backend does), read by status
DISAGREEMENT = "disagreement"  # accounting and the controller tell different stories
NODE_PROBLEM = "node_problem"  # the drained/down node the job is on or waits for
CONTROLLER_DOWN = "controller_down"  # squeue failed; this answer is accounting's alone
ACCOUNTED_AS = "accounted_as"  # of a disputed job: the state accounting gives it
SOURCE, CONTROLLER = "source", "controller"  # extra[SOURCE] == CONTROLLER: the state is the controller's own word

# JobInfo.reason of a job the scheduler cancelled because a dependency failed
DEPENDENCY_FAILED = "a dependency failed (cancelled by --kill-on-invalid-dep)"


@dataclass(frozen=True)
class SubmitRequest:
    run_dir: Path
    run_id: str
    stage: str
    resources: Resources
    after: tuple[str, ...] = ()  # job ids that must COMPLETE first (afterok)
    hold: bool = False  # submitted held; released together by release() (closes the parent-finished race)
    retries: int = 0


@dataclass(frozen=True)
class ArrayRequest:
    """One job array: task i runs stage tasks[i] (a sweep's variant stages of one base stage, orchestrator/sweep.py).
    `after` ids must complete before any task starts (afterok); for each parent array in `corr`, task i waits only
    for that parent's task i (aftercorr, sbatch(1) of Slurm 22.05: "A task of this job array can begin execution
    after the corresponding task ID in the specified job has completed successfully"). Every task gets the same
    resources (sbatch --array)."""

    run_dir: Path
    run_id: str
    stage: str  # the base stage, for the job name and tag
    tasks: tuple[str, ...]
    resources: Resources
    after: tuple[str, ...] = ()
    corr: tuple[tuple[str, ...], ...] = ()  # per parent array: its task ids, in task order (len == len(tasks))
    hold: bool = False
    retries: int = 0
    throttle: int | None = None  # at most this many tasks at once (--array=0-N%throttle)


DEFAULT_MAX_ARRAY_SIZE = 1001  # slurm.conf(5) MaxArraySize default: task indices 0..1000


@dataclass(frozen=True)
class JobInfo:
    state: JobState
    exit_code: int | None = None
    nodes: str | None = None
    start: str | None = None
    end: str | None = None
    reason: str | None = None  # the scheduler's own code (Slurm: Dependency, JobHeldUser, ...)
    note: str | None = None  # what it means for the user, in the backend's words (status shows it)
    restarts: int = 0
    history: tuple[str, ...] = ()  # earlier runs of a requeued job: "NODE_FAIL at <end> on <node>", oldest first
    extra: dict[str, str] = field(default_factory=dict)


class AccountingUnavailable(SchedulerError):
    """Accounting (sacct) failed but the controller answered: `found` holds what squeue knows. Status uses it with
    the jobs' own records and shows one warning line, instead of calling every stage UNKNOWN (issue 13 item 9)."""

    def __init__(self, found: dict[str, JobInfo], cause: str) -> None:
        self.found = found
        super().__init__(f"accounting is unreachable ({cause}); states come from the controller and the jobs' "
                         "own records", "check slurmdbd and its database (sacctmgr show cluster)")


class Scheduler(Protocol):
    """Contract every backend keeps:

    1. submit() returns a job id only after the scheduler accepted the job; it raises SchedulerError otherwise.
    2. query() makes at most one batched call per backend for all ids; an id the scheduler knows nothing about is
       absent from the result (never guessed); a failed query raises SchedulerError (status shows UNKNOWN).
    3. cancel() is idempotent: cancelling a finished or unknown job is not an error.
    5. find_tagged() finds jobs by the run/stage tag alone, so a submission killed between sbatch and the
       state write never leads to a second job for the same stage.
    4. A job whose dependency fails is cancelled by the scheduler, never left pending forever.
    6. repair() never lets resume release a job that cannot start (issue 13 item 1).
    """

    kind: str

    def submit(self, request: SubmitRequest) -> str: ...

    def submit_array(self, request: ArrayRequest) -> list[str]:
        """Submit one job array; returns each task's job id (Slurm: `<array id>_<task>`), in task order."""
        ...

    def max_array_size(self) -> int:
        """The most tasks one array may have (Slurm: MaxArraySize of `scontrol show config`, read once)."""
        ...

    def release(self, job_ids: Sequence[str]) -> None: ...

    def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]: ...

    def cancel(self, job_ids: Sequence[str]) -> None: ...

    def find_tagged(self, run_dir: Path, run_id: str, stages: Sequence[str]) -> dict[str, list[str]]:
        """Job ids the scheduler holds for each tag of this run (after a crash), oldest first. A tag is a stage name;
        a job array is tagged with its base stage (ArrayRequest.stage), so callers ask for those too
        (arrays.array_tags); Slurm: one id per array task, `<array id>_<task>`."""
        ...

    def repair(self, run_dir: Path, stage: str, job_id: str) -> tuple[bool, str | None]:
        """Before resume releases a held job: can it run? (True, None) yes; (True, note) it could not but was
        repaired (note says how); (False, why) it cannot, and must be cancelled and submitted again."""
        ...
