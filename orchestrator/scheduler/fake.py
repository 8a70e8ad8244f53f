"""In-memory backend for unit tests: records every call, lets tests script each job's state. It stands in for Slurm:
scripted jobs carry Slurm's reason codes (Dependency, JobHeldUser), explained as the Slurm backend explains them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.errors import SchedulerError
from orchestrator.scheduler.slurm_reasons import explained
from orchestrator.scheduler.types import ArrayRequest, JobInfo, SubmitRequest
from orchestrator.states import JobState


@dataclass
class FakeScheduler:
    kind: str = "fake"
    jobs: dict[str, JobInfo] = field(default_factory=dict)
    requests: dict[str, SubmitRequest] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    cancelled: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    query_calls: int = 0
    fail_submit_of: str | None = None  # stage name whose submission is refused
    fail_query: bool = False
    next_id: int = 100
    repairs: dict[str, tuple[bool, str | None]] = field(default_factory=dict)  # job id -> what repair() says
    arrays: dict[str, ArrayRequest] = field(default_factory=dict)  # array id -> its request
    deps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # job id -> what it waits for (afterok/corr)
    max_array: int = 1001
    submit_calls: int = 0  # one per sbatch a real backend would run

    def submit(self, request: SubmitRequest) -> str:
        if request.stage == self.fail_submit_of:
            raise SchedulerError(f"sbatch refused stage {request.stage}: fake refusal")
        self.next_id += 1
        self.submit_calls += 1
        job_id = str(self.next_id)
        self.requests[job_id] = request
        self.deps[job_id] = request.after
        self.jobs[job_id] = JobInfo(JobState.PENDING, reason="JobHeldUser" if request.hold else "Dependency")
        if request.hold:
            self.held.add(job_id)
        return job_id

    def submit_array(self, request: ArrayRequest) -> list[str]:
        if request.stage == self.fail_submit_of:
            raise SchedulerError(f"sbatch refused stage {request.stage}: fake refusal")
        if len(request.tasks) > self.max_array:
            raise SchedulerError(f"sbatch: error: Batch job submission failed: Invalid job array specification "
                                 f"({len(request.tasks)} tasks > MaxArraySize {self.max_array})")
        self.next_id += 1
        self.submit_calls += 1
        base = str(self.next_id)
        self.arrays[base] = request
        ids = [f"{base}_{i}" for i in range(len(request.tasks))]
        for index, (job_id, stage) in enumerate(zip(ids, request.tasks)):
            self.requests[job_id] = SubmitRequest(request.run_dir, request.run_id, stage, request.resources,
                                                  request.after, request.hold, request.retries)
            self.deps[job_id] = request.after + tuple(parent[index] for parent in request.corr)
            self.jobs[job_id] = JobInfo(JobState.PENDING, reason="JobHeldUser" if request.hold else "Dependency")
            if request.hold:
                self.held.add(job_id)
        return ids

    def max_array_size(self) -> int:
        return self.max_array

    def release(self, job_ids: Sequence[str]) -> None:
        self.held.difference_update(job_ids)
        self.released.extend(job_ids)
        for job_id in job_ids:  # a held job (JobState.HELD, scripted by a test) waits on its dependencies again
            if job_id in self.jobs and self.jobs[job_id].state is JobState.HELD:
                self.jobs[job_id] = JobInfo(JobState.PENDING, reason="Dependency")

    def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        self.query_calls += 1
        if self.fail_query:
            raise SchedulerError("fake sacct failure")
        return {j: explained(self.jobs[j], j) for j in job_ids if j in self.jobs}  # its jobs speak Slurm's reasons

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self.cancelled.append(job_id)
            if job_id in self.jobs and not self.jobs[job_id].state.terminal:
                self.jobs[job_id] = JobInfo(JobState.CANCELLED)

    def find_tagged(self, run_dir: object, run_id: str, stages: Sequence[str]) -> dict[str, list[str]]:
        """By tag, as Slurm's job name: a job array's tasks carry its base stage's name (ArrayRequest.stage)."""
        found: dict[str, list[str]] = {}
        for job_id, request in self.requests.items():
            array = self.arrays.get(job_id.partition("_")[0]) if "_" in job_id else None
            tag = array.stage if array is not None else request.stage
            if request.run_id == run_id and tag in stages:
                found.setdefault(tag, []).append(job_id)
        return found

    def repair(self, run_dir: object, stage: str, job_id: str) -> tuple[bool, str | None]:
        return self.repairs.get(job_id, (True, None))

    def finish(self, job_id: str, state: JobState, exit_code: int = 0) -> None:
        """Test helper: move a job to a final state, cancelling dependents like --kill-on-invalid-dep."""
        self.jobs[job_id] = JobInfo(state, exit_code=exit_code, nodes="node1")
        if state is not JobState.COMPLETED:
            for other, waits in self.deps.items():
                if job_id in waits and not self.jobs[other].state.terminal:
                    self.finish(other, JobState.CANCELLED)
