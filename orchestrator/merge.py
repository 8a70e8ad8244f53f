"""One job's answer merged into its attempt: the scheduler's state and words, the job's own end record (exit code,
reason, restarts), who cancelled it, and the rule that accounting alone never moves a seen job backwards."""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

from orchestrator.scheduler import CONTROLLER_DOWN, DISAGREEMENT, NODE_PROBLEM, JobInfo
from orchestrator.state import Attempt
from orchestrator.states import JobState

DISPUTED = "sources disagree"
ACCOUNTING_BEHIND = ("last seen running by the controller; accounting has not recorded its start yet (slurmdbd is "
                     "updated asynchronously)")

CANCEL_REQUESTED = "cancel requested"
CANCELLED_BY_US = "cancelled by `pipeline cancel`"
CANCELLED_BY_USER = "cancelled by a user (scancel); no dependency had failed"


def merge(attempt: Attempt, info: JobInfo | None, record: dict[str, Any] | None,
          degraded: bool = False) -> Attempt:
    """The attempt as the scheduler now answers for it (info), with the job's own end record; None: it knows
    nothing, so the record decides."""
    new = attempt.model_copy()
    info = _not_backwards(attempt, info)
    if info is not None:
        new.state, new.reason = info.state, None if info.state.ok else info.note  # the backend's words for its code
        new.exit_code = _exit_code(info, record, new.exit_code)
        new.nodes = info.nodes or new.nodes
        new.start, new.end = info.start or new.start, info.end or new.end
        if info.state.terminal and not new.end and record and record.get("end"):
            new.end = record["end"]  # ended before slurmdbd recorded it: the job's own end record has the time
        new.restarts = max(info.restarts, new.restarts, int(record.get("restarts", 0)) if record else 0)
        new.history = list(info.history) or new.history
        if record and info.state.terminal and record.get("reason") and not info.state.ok:
            new.reason = record["reason"]  # "declared outputs missing: ..." beats a bare FAILED
        if info.state is JobState.TIMEOUT:
            new.reason = _timeout_reason(new.exit_code)
        if attempt.reason in (CANCEL_REQUESTED, CANCELLED_BY_US):
            new.reason = CANCELLED_BY_US if info.state is JobState.CANCELLED else CANCEL_REQUESTED
        if info.state is JobState.HELD:
            new.reason = info.note  # how to release it, which beats a cancel we asked for and did not happen
        new.reason = _joined(new.reason, *(info.extra.get(k) for k in (NODE_PROBLEM, DISAGREEMENT)))
        if DISAGREEMENT in info.extra:
            new.reason = f"{DISPUTED}: {new.reason}"
        return new
    # The scheduler knows nothing (no accounting and aged out of squeue, or purged): trust the job's own record.
    if record is None:
        new.state, new.reason = JobState.UNKNOWN, (
            "accounting is unreachable and the controller no longer lists this job; it left no record" if degraded
            else "the scheduler has no record of this job and it left none")
    elif "exit_code" in record:
        new.state = JobState.COMPLETED if record["exit_code"] == 0 else JobState.FAILED
        new.exit_code, new.end, new.reason = record["exit_code"], record["end"], record.get("reason")
    else:
        new.state, new.reason = JobState.UNKNOWN, (
            "accounting is unreachable, the controller no longer lists it, and it left no end record" if degraded
            else "started but left no end record and the scheduler forgot it")
    if record is not None:
        new.start, new.nodes = record.get("start") or new.start, record.get("nodes") or record.get("host")
        new.restarts = max(new.restarts, int(record.get("restarts", 0)))
    return new


def _joined(*parts: str | None) -> str | None:
    return "; ".join(p for p in parts if p) or None


def _exit_code(info: JobInfo, record: dict[str, Any] | None, before: int | None) -> int | None:
    """The code (or 128+signal) that really ended the job; None while it runs and for a job that never ran.
    sacct reports 0:0 for pending and never-started jobs and, for the allocation of a TIMEOUT job, 0:0 too (the
    signal is on the batch step): the job's own end record, when there is one, says what the program returned."""
    if not info.state.terminal:
        return None
    if info.state.ok:
        return 0
    if record is not None and isinstance(record.get("exit_code"), int):
        return int(record["exit_code"])
    if info.exit_code:
        return info.exit_code
    if info.state is JobState.TIMEOUT:
        return 128 + signal.SIGTERM  # sbatch(1) --time: at the limit every task gets SIGTERM, then SIGKILL
    return before if before else None


def _timeout_reason(code: int | None) -> str:
    sig = _signal_name(code)
    return "hit its time limit (resources.time)" + (f"; ended by {sig}" if sig else "")


def _signal_name(code: int | None) -> str | None:
    if code is None or code <= 128:
        return None
    try:
        return signal.Signals(code - 128).name
    except ValueError:
        return None


def _not_backwards(attempt: Attempt, info: JobInfo | None) -> JobInfo | None:
    """With the controller down, states come from accounting alone, and slurmdbd hears of a start after the
    controller does: a job status saw RUNNING that accounting still calls PENDING, with no restart accounting
    knows of, has started (only a requeue, which accounting records as a restart, sends a job back to pending;
    sacct(1) --duplicates). Seen on the test cluster under load: slurmctld killed -9 a second after a start."""
    if info is None or CONTROLLER_DOWN not in info.extra or attempt.state is not JobState.RUNNING:
        return info
    if info.state is not JobState.PENDING or info.restarts > attempt.restarts:
        return info
    return dataclasses.replace(info, state=JobState.RUNNING, nodes=info.nodes or attempt.nodes,
                               start=info.start or attempt.start, note=ACCOUNTING_BEHIND)
