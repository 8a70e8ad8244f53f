"""Helpers shared by the end-to-end tests (local and Slurm)."""

from __future__ import annotations

import time
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
    deadline = time.monotonic() + timeout
    while status.refresh([run_dir])[0].state.stages[stage].state is not wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"stage {stage} never reached {wanted.value}")
        time.sleep(0.2)
