"""Local backend: the same DAG on this machine without Slurm, through a detached driver process.

Job records live in <run>/local/jobs/<n>.json (the local "controller"); a driver started with setsid runs
ready jobs one at a time through the same job wrapper Slurm uses, and cancels dependents of a failed job
exactly like --kill-on-invalid-dep. Nobody has to keep a terminal open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator import state as statelib
from orchestrator.errors import SchedulerError
from orchestrator.scheduler.types import DEFAULT_MAX_ARRAY_SIZE, ArrayRequest, JobInfo, SubmitRequest
from orchestrator.secrets import job_env
from orchestrator.states import JobState


def split_id(job_id: str) -> tuple[str, str]:
    run_id, sep, number = job_id.rpartition("/")
    if not sep or not number.isdigit():
        raise SchedulerError(f"{job_id!r} is not a local job id (RUN_ID/N)")
    return run_id, number


def short_id(job_id: str) -> str:
    """<n> of a local id (<run id>/<n>); any other backend's id as it is."""
    run_id, sep, number = job_id.rpartition("/")
    return number if sep and number.isdigit() else job_id


class LocalJobs:
    """The job table of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = statelib.RunPaths(run_dir).local_jobs
        self.lock = statelib.RunPaths(run_dir).local_jobs_lock

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with statelib.locked(self.lock):
            yield

    def path(self, number: str) -> Path:
        return self.dir / f"{int(number):06d}.json"

    def read(self, number: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.path(number).read_text(encoding="utf-8"))
            return data
        except FileNotFoundError:
            return None

    def write(self, number: str, job: dict[str, Any]) -> None:
        statelib.write_json(self.path(number), job)

    def all(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.dir.is_dir():
            return []
        jobs = []
        for path in sorted(self.dir.glob("*.json")):
            jobs.append((str(int(path.stem)), json.loads(path.read_text(encoding="utf-8"))))
        return jobs

    def next_number(self) -> str:
        return str(len(list(self.dir.glob("*.json"))) + 1)


class LocalScheduler:
    kind = "local"

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = run_dir
        self.query_calls = 0

    def submit(self, request: SubmitRequest) -> str:
        jobs = LocalJobs(request.run_dir)
        with jobs.locked():
            number = jobs.next_number()
            jobs.write(number, {"stage": request.stage, "after": list(request.after), "state": "PENDING",
                                "held": request.hold, "submitted": statelib.now_iso(), "retries": request.retries})
        if not request.hold:
            start_driver(request.run_dir)
        return f"{request.run_id}/{number}"

    def submit_array(self, request: ArrayRequest) -> list[str]:
        """One job per task, each waiting for `after` and for task i of each parent array only: the driver then
        keeps aftercorr's per-task pairing. Each task gets SLURM_ARRAY_JOB_ID/SLURM_ARRAY_TASK_ID as on Slurm."""
        jobs = LocalJobs(request.run_dir)
        ids = []
        with jobs.locked():
            first = int(jobs.next_number())
            for index, stage in enumerate(request.tasks):
                number = str(first + index)
                after = list(request.after) + [parent[index] for parent in request.corr]
                jobs.write(number, {"stage": stage, "after": after, "state": "PENDING", "held": request.hold,
                                    "submitted": statelib.now_iso(), "retries": request.retries,
                                    "env": {"SLURM_ARRAY_JOB_ID": str(first), "SLURM_ARRAY_TASK_ID": str(index)}})
                ids.append(f"{request.run_id}/{number}")
        if not request.hold:
            start_driver(request.run_dir)
        return ids

    def max_array_size(self) -> int:
        return DEFAULT_MAX_ARRAY_SIZE  # no controller to ask; the same split as a default Slurm

    def release(self, job_ids: Sequence[str]) -> None:
        for run_dir, numbers in self._by_run(job_ids).items():
            jobs = LocalJobs(run_dir)
            with jobs.locked():
                for number in numbers:
                    job = jobs.read(number)
                    if job is not None:
                        jobs.write(number, {**job, "held": False})
            start_driver(run_dir)

    def cancel(self, job_ids: Sequence[str]) -> None:
        for run_dir, numbers in self._by_run(job_ids).items():
            jobs = LocalJobs(run_dir)
            with jobs.locked():
                for number in numbers:
                    job = jobs.read(number)
                    if job is None or JobState(job["state"]).terminal:
                        continue
                    if job["state"] == "RUNNING" and job.get("pgid"):
                        # Written before the kill: the driver reads this flag as soon as its child dies.
                        jobs.write(number, {**job, "cancel_requested": True})
                        kill_group(int(job["pgid"]))
                    elif job["state"] == "RUNNING":
                        # Claimed but not yet started: the driver sees the flag right after it starts the child.
                        jobs.write(number, {**job, "cancel_requested": True})
                    else:
                        jobs.write(number, {**job, "state": "CANCELLED", "reason": "cancelled by user",
                                            "end": statelib.now_iso()})

    def find_tagged(self, run_dir: Path, run_id: str, stages: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for number, job in LocalJobs(run_dir).all():
            if job["stage"] in stages:
                found.setdefault(job["stage"], []).append(_job_id(run_dir, number))
        return found

    def repair(self, run_dir: Path, stage: str, job_id: str) -> tuple[bool, str | None]:
        return True, None  # the job table entry is written before submit() returns: nothing can be half-made

    def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        self.query_calls += 1
        found: dict[str, JobInfo] = {}
        for run_dir, numbers in self._by_run(job_ids).items():
            jobs = LocalJobs(run_dir)
            for number in numbers:
                job = jobs.read(number)
                if job is not None:
                    found[_job_id(run_dir, number)] = _info(job)
        return found

    def _by_run(self, job_ids: Sequence[str]) -> dict[Path, list[str]]:
        grouped: dict[Path, list[str]] = {}
        for job_id in job_ids:
            run_id, number = split_id(job_id)
            run_dir = self.run_dir if self.run_dir and self.run_dir.name == run_id else statelib.find_run(run_id)
            grouped.setdefault(run_dir, []).append(number)
        return grouped


def _job_id(run_dir: Path, number: str) -> str:
    return f"{run_dir.name}/{number}"


def _info(job: dict[str, Any]) -> JobInfo:
    reason = job.get("reason") or ("held" if job.get("held") else None)  # the driver writes its reasons in words
    return JobInfo(state=JobState(job["state"]), exit_code=job.get("exit_code"), nodes=job.get("node"),
                   start=job.get("start"), end=job.get("end"), reason=reason,
                   note=reason)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def start_driver(run_dir: Path) -> None:
    """Start a detached driver for run_dir; a second driver waits for the first's lock, then finds no work."""
    log = open(statelib.RunPaths(run_dir).driver_log, "ab")
    try:
        subprocess.Popen([sys.executable, "-m", "orchestrator.scheduler.localdriver", str(run_dir)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env=job_env(run_dir, os.environ), close_fds=True)
    finally:
        log.close()
