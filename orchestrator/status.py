"""Status: refresh the state of many runs with one batched scheduler query, and build the view.

Stages that ended more than RECHECK_S ago are never queried again; all other jobs of all runs shown go
into one sacct call and one squeue call for the same ids (squeue alone without accounting): the polling pattern
that does not overload slurmctld/slurmdbd (sacct(1) and squeue(1) PERFORMANCE sections; submitit#1759,
Snakemake-Profiles/slurm#81). Asking both lets status say when they disagree (issue 13 item 4).
"""

from __future__ import annotations

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
    CONTROLLER,
    CONTROLLER_DOWN,
    DEPENDENCY_FAILED,
    SOURCE,
    AccountingUnavailable,
    JobInfo,
    Scheduler,
    query_group,
)
from orchestrator.merge import CANCELLED_BY_US, CANCELLED_BY_USER, DISPUTED, merge
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
            # A controller restart (or a requeue) runs it again: say so. Only on the controller's own word:
            # accounting alone still calling it running is slurmdbd behind, or a runaway record.
            if revived is not None and revived.state.active and revived.extra.get(SOURCE) == CONTROLLER:
                stage.attempts[-1] = updates[name] = merge(current, revived, None)
            continue
        if found is None:
            current.state, current.reason = JobState.UNKNOWN, "scheduler query failed"
            continue  # shown, never persisted: a failed query is not news about the job
        info = found.get(current.job_id)
        merged = merge(current, info, latest_record(paths, name, current.job_id), degraded)
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


def restart_note(attempt: Attempt) -> str:
    """'restart 1 (NODE_FAIL at 09:12:03 on dev2)': how often Slurm ran this job again, and why and when."""
    if not attempt.restarts:
        return ""
    why = "; ".join(attempt.history[-3:])
    return f"restart {attempt.restarts}" + (f" ({why})" if why else "")


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
