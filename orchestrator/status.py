"""Status: refresh the state of many runs with one batched scheduler query, and build the view.

Stages that ended more than RECHECK_S ago are never queried again; all other jobs of all runs shown go
into one sacct call and one squeue call for the same ids (squeue alone without accounting): the polling pattern
that does not overload slurmctld/slurmdbd (sacct(1) and squeue(1) PERFORMANCE sections; submitit#1759,
Snakemake-Profiles/slurm#81). Asking both lets status say when they disagree (issue 13 item 4).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.errors import SchedulerError
from orchestrator.jobfiles import latest_record as latest_record  # re-exported: status.X callers
from orchestrator.jobfiles import progress as progress
from orchestrator.jobfiles import progress_note as progress_note
from orchestrator.jobfiles import tracking_link as tracking_link
from orchestrator.scheduler import (
    CONTROLLER_DOWN,
    DEPENDENCY_FAILED,
    DISAGREEMENT,
    NODE_PROBLEM,
    AccountingUnavailable,
    JobInfo,
    Scheduler,
    query_group,
)
from orchestrator.spec import ClusterProfile
from orchestrator.state import Attempt, RunPaths, RunState, Store
from orchestrator.states import JobState


@dataclass
class RunView:
    run_dir: Path
    state: RunState
    warning: str | None = None


def _cluster_of(run_dir: Path) -> ClusterProfile:
    plan = RunPaths(run_dir).plan_json()
    return ClusterProfile.model_validate(plan["cluster"])


def scheduler_for(run_dir: Path) -> Scheduler:
    from orchestrator.scheduler import for_cluster

    return for_cluster(_cluster_of(run_dir), run_dir)


def pending_ids(state: RunState) -> list[str]:
    return [s.current.job_id for s in state.stages.values() if s.current is not None and not s.state.terminal]


RECHECK_S = 900.0  # how long after its end a finished job is still asked about (a controller crash can revive it)


def recent_ids(state: RunState, now: datetime | None = None) -> list[str]:
    """Jobs that ended in the last RECHECK_S: a slurmctld killed -9 reloads its last state save and may run such a
    job again (issue 13 item 4). Older ones are never queried again, so status of many old runs stays cheap."""
    now = now or datetime.now(timezone.utc)
    ids = []
    for stage in state.stages.values():
        end = parse_time(stage.current.end) if stage.current is not None and stage.state.terminal else None
        if stage.current is not None and end is not None and (now - end).total_seconds() < RECHECK_S:
            ids.append(stage.current.job_id)
    return ids


def refresh(run_dirs: list[Path], schedulers: dict[str, Scheduler] | None = None) -> list[RunView]:
    """Read each run, query every non-terminal job in one call per scheduler, persist what changed."""
    views = [RunView(d, Store(d).read()) for d in run_dirs]
    groups: dict[str, list[RunView]] = {}
    for view in views:
        groups.setdefault(_group_key(view), []).append(view)
    for key, members in groups.items():
        ids = [j for v in members for j in pending_ids(v.state)]
        if not ids:
            continue  # nothing live: finished jobs alone are not worth a query
        ids += [j for v in members for j in recent_ids(v.state)]
        scheduler = (schedulers or {}).get(key) or scheduler_for(members[0].run_dir)
        degraded = False
        try:
            found: dict[str, JobInfo] | None = scheduler.query(ids)
        except AccountingUnavailable as exc:
            found, degraded = exc.found, True
            for view in members:
                view.warning = exc.message
        except SchedulerError as exc:
            found = None
            for view in members:
                view.warning = f"scheduler query failed ({exc.message}); states below may be stale"
        down = next((i.extra[CONTROLLER_DOWN] for i in (found or {}).values() if CONTROLLER_DOWN in i.extra), None)
        for view in members:
            if down is not None:
                view.warning = (f"the controller (slurmctld) did not answer ({down}); states come from accounting "
                                "alone and cannot be checked against it")
            _apply(view, found, degraded)
            _warn_disputes(view)
    return views


DISPUTED = "sources disagree"


def _warn_disputes(view: RunView) -> None:
    """One warning line per run when accounting and the controller disagree about any of its jobs."""
    names = [n for n, s in view.state.stages.items() if s.current and DISPUTED in (s.current.reason or "")]
    if not names:
        return
    line = (f"accounting and the controller disagree about stage(s) {', '.join(names)} (see NOTE); shown as the "
            "controller says. slurmctld may have restarted from an older state save: check squeue, sacct and "
            "the slurmctld log")
    view.warning = f"{view.warning}; {line}" if view.warning else line


def _group_key(view: RunView) -> str:
    return group_key(view.state, view.run_dir)


def group_key(state: RunState, run_dir: Path) -> str:
    """Runs whose jobs one scheduler instance can query together."""
    return query_group(state.scheduler, run_dir)


def _apply(view: RunView, found: dict[str, JobInfo] | None, degraded: bool = False) -> None:
    paths = RunPaths(view.run_dir)
    updates: dict[str, Attempt] = {}
    for name, stage in view.state.stages.items():
        current = stage.current
        if current is None:
            continue
        if stage.state.terminal:
            revived = (found or {}).get(current.job_id)
            if revived is not None and revived.state.active:  # a controller restart runs it again: say so
                stage.attempts[-1] = updates[name] = _merge(current, revived, None)
            continue
        if found is None:
            current.state, current.reason = JobState.UNKNOWN, "scheduler query failed"
            continue  # shown, never persisted: a failed query is not news about the job
        info = found.get(current.job_id)
        merged = _merge(current, info, latest_record(paths, name, current.job_id), degraded)
        stage.attempts[-1] = merged
        if degraded and merged.state is JobState.UNKNOWN:
            continue  # shown, never persisted: accounting may know how it ended once it is back
        updates[name] = merged
    for name in updates:
        _explain_cancel(view.state, name)
    if updates:
        with Store(view.run_dir).update() as fresh:
            for name, attempt in updates.items():
                target = fresh.stages[name].current
                if target is not None and target.job_id == attempt.job_id:  # a concurrent rerun wins
                    fresh.stages[name].attempts[-1] = attempt


CANCEL_REQUESTED = "cancel requested"
CANCELLED_BY_US = "cancelled by `pipeline cancel`"
CANCELLED_BY_USER = "cancelled by a user (scancel); no dependency had failed"


def _merge(attempt: Attempt, info: JobInfo | None, record: dict[str, Any] | None,
           degraded: bool = False) -> Attempt:
    new = attempt.model_copy()
    if info is not None:
        new.state, new.reason = info.state, None if info.state.ok else info.note  # the backend's words for its code
        new.exit_code = _exit_code(info, record, new.exit_code)
        new.nodes = info.nodes or new.nodes
        new.start, new.end = info.start or new.start, info.end or new.end
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


def restart_note(attempt: Attempt) -> str:
    """'restart 1 (NODE_FAIL at 09:12:03 on dev2)': how often Slurm ran this job again, and why and when."""
    if not attempt.restarts:
        return ""
    why = "; ".join(attempt.history[-3:])
    return f"restart {attempt.restarts}" + (f" ({why})" if why else "")


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


def _explain_cancel(state: RunState, name: str) -> None:
    """Who cancelled a job? Slurm keeps a cancelled job's last pending reason (Dependency, and sometimes still the
    JobHeldUser of our held submit in accounting) whoever cancelled it. A failed parent (or Slurm's own
    DependencyNeverSatisfied) makes it a dependency failure; `pipeline cancel` marked its own; otherwise a user
    cancelled it (scancel)."""
    current = state.stages[name].current
    if current is None or current.state is not JobState.CANCELLED or current.reason == CANCELLED_BY_US:
        return
    parents = [state.stages[p].state for p in state.stages[name].after if p in state.stages]
    if any(p.terminal and not p.ok for p in parents):
        current.reason = DEPENDENCY_FAILED
    elif current.reason in (None, "", DEPENDENCY_FAILED):  # the backend's note says no more (stale codes dropped)
        current.reason = CANCELLED_BY_USER


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone()  # Slurm prints local time without an offset


def elapsed(attempt: Attempt) -> str:
    start = parse_time(attempt.start)
    if start is None:
        return ""
    end = parse_time(attempt.end) or (datetime.now(timezone.utc) if attempt.state is JobState.RUNNING else None)
    if end is None:
        return ""
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def to_json(view: RunView) -> dict[str, Any]:
    data = view.state.model_dump(mode="json")
    data["run_dir"] = str(view.run_dir)
    data["warning"] = view.warning
    for name, stage in view.state.stages.items():
        data["stages"][name]["state"] = stage.state.value
        data["stages"][name]["elapsed"] = elapsed(stage.current) if stage.current else ""
        data["stages"][name]["progress"] = progress(RunPaths(view.run_dir), name, stage.current)
        data["stages"][name]["tracking"] = tracking_link(RunPaths(view.run_dir), name, stage.current)
    from orchestrator import sweepview  # late: only runs with a sweep need it (it loads the spec models)

    sweep = sweepview.to_json(view.run_dir, view.state)
    if sweep is not None:
        data["sweep"] = sweep  # variants, the variants x stages matrix, evaluate rows with the best marked
    return data
