"""Helpers shared by the end-to-end tests (local and Slurm)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator import cli, state, status
from orchestrator.states import JobState


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def latest_run() -> Path:
    return state.find_run(None)


def wait_terminal(run_dir: Path, timeout: float = 120.0) -> dict[str, JobState]:
    """Poll status until every submitted stage is terminal; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        view = status.refresh([run_dir])[0]
        states = {n: s.state for n, s in view.state.stages.items()}
        if all(s.terminal or s is JobState.NOT_SUBMITTED for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_dir} not finished after {timeout} s: {states}")
        time.sleep(0.3)


def wait_state(run_dir: Path, stage: str, wanted: JobState, timeout: float = 60.0) -> None:
    """Poll status until `stage` is in `wanted`. A transient state (RUNNING) is only seen if it lasts several
    polls: a status refresh takes a second or more on a loaded 2-core CI machine, so keep such stages running."""
    deadline = time.monotonic() + timeout
    while (now := status.refresh([run_dir])[0].state.stages[stage].state) is not wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"stage {stage} never reached {wanted.value} in {timeout} s (last: {now.value})")
        time.sleep(0.2)


def wait_accounted(job_ids: Sequence[str], timeout: float = 60.0) -> dict[str, str]:
    """Poll `sacct` until it has recorded the end of every job; returns job id -> accounting's state (its first
    word).

    slurmdbd is updated asynchronously by slurmctld (slurm.conf(5) AccountingStorageType; its agent queue), and on a
    loaded CI machine it lags a second or more behind the controller: a job squeue, `sbatch --wait` or status
    already shows ended can still be RUNNING, PENDING or absent in sacct. For tests that then read accounting
    themselves (sacct, `pipeline report`); what status shows during that lag is tested where it matters."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,End", "-j", ",".join(job_ids)],
                             capture_output=True, text=True).stdout
        rows = {job: (st, end) for job, st, end in (line.split("|")[:3] for line in out.splitlines()
                                                    if line.count("|") >= 2)}
        if all(j in rows and rows[j][1] not in ("", "Unknown", "None") for j in job_ids):
            return {j: rows[j][0].split(" ")[0] for j in job_ids}  # "CANCELLED by 0" -> CANCELLED
        if time.monotonic() > deadline:
            raise AssertionError(f"accounting never recorded the end of {list(job_ids)} in {timeout} s: {rows}")
        time.sleep(0.3)
