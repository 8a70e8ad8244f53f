"""The detached driver of the local backend: runs ready jobs of one run directory until none is left."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator import state as statelib
from orchestrator.scheduler.local import LocalJobs, kill_group, split_id
from orchestrator.scheduler.types import DEPENDENCY_FAILED
from orchestrator.states import JobState

POLL_S = 0.2


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run_dir = Path(args[0])
    lock_fd = os.open(statelib.RunPaths(run_dir).driver_lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # one driver per run; a later one waits, then finds no work
    jobs = LocalJobs(run_dir)
    while True:
        number = _next_ready(jobs)
        if number is None:
            if not _waiting(jobs):
                return 0
            time.sleep(POLL_S)
            continue
        _run(jobs, run_dir, number)


def _state_of(jobs: LocalJobs, job_id: str) -> JobState:
    job = jobs.read(split_id(job_id)[1])
    return JobState(job["state"]) if job else JobState.UNKNOWN


def _next_ready(jobs: LocalJobs) -> str | None:
    """Cancel jobs whose dependency can never be met; return the first job whose parents all completed."""
    with jobs.locked():
        for number, job in jobs.all():
            if job["state"] != "PENDING" or job.get("held"):
                continue
            parents = [_state_of(jobs, p) for p in job["after"]]
            if any(s.terminal and not s.ok or s is JobState.UNKNOWN for s in parents):
                # Same semantics as sbatch --kill-on-invalid-dep=yes: never wait forever.
                job.update(state="CANCELLED", reason=DEPENDENCY_FAILED, end=statelib.now_iso())
                jobs.write(number, job)
                continue
            if all(s.ok for s in parents):
                job.update(state="RUNNING", start=statelib.now_iso(), node=socket.gethostname())
                jobs.write(number, job)
                return number
    return None


def _waiting(jobs: LocalJobs) -> bool:
    return any(j["state"] in ("PENDING", "RUNNING") and not j.get("held") for _, j in jobs.all())


def _run(jobs: LocalJobs, run_dir: Path, number: str) -> None:
    job = jobs.read(number)
    assert job is not None
    job_id = f"{run_dir.name}/{number}"
    attempts = 0
    while True:
        child = subprocess.Popen([sys.executable, "-m", "orchestrator.jobside", str(run_dir), job["stage"], job_id],
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 env={**os.environ, **job.get("env", {}), "SLURM_RESTART_COUNT": str(attempts)})
        _started(jobs, number, child.pid)
        rc = child.wait()
        current = jobs.read(number) or {}
        # Retry only a stage that was killed (rc < 0: OOM killer, a lost machine), like Slurm requeues
        # NODE_FAIL/PREEMPTED; a program that exits non-zero would fail the same way again.
        if rc >= 0 or current.get("cancel_requested") or attempts >= int(job.get("retries", 0)):
            break
        attempts += 1  # a requeue: same job id, next restart count
    final: dict[str, Any] = {"end": statelib.now_iso(), "exit_code": rc if rc >= 0 else 128 - rc, "restarts": attempts}
    if current.get("cancel_requested"):
        final.update(state="CANCELLED", reason="cancelled by user")
    else:
        final.update(state="COMPLETED" if rc == 0 else "FAILED", reason=None if rc == 0 else f"exit code {rc}")
    _update(jobs, number, **final)


def _started(jobs: LocalJobs, number: str, pid: int) -> None:
    """Record the child's process group; a cancel that came in before it existed kills it now."""
    with jobs.locked():
        job = jobs.read(number) or {}
        jobs.write(number, {**job, "pgid": pid, "pid": pid})
        if job.get("cancel_requested"):
            kill_group(pid)


def _update(jobs: LocalJobs, number: str, **fields: Any) -> None:
    with jobs.locked():
        job = jobs.read(number) or {}
        job.update(fields)
        jobs.write(number, job)


if __name__ == "__main__":
    sys.exit(main())
