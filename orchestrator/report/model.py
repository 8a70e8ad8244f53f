"""What a report shows, as data: timeline spans, loss curves, per-stage resource use (figures.py draws it,
page.py writes it as HTML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator import status
from orchestrator.jobfiles import metric_rows
from orchestrator.scheduler import short_id
from orchestrator.state import Attempt, RunPaths
from orchestrator.states import JobState


@dataclass(frozen=True)
class Span:
    """One bar of the timeline: an attempt waiting in the queue or running (one per requeue restart)."""

    stage: str
    job_id: str
    kind: str  # "pending" | "running"
    start: datetime
    end: datetime
    outcome: str  # the attempt's final state for its last running span, "requeued" before a restart


@dataclass(frozen=True)
class Curve:
    stage: str
    label: str  # job id and restart: a resume or requeue continues the step axis in its own colour
    steps: list[int]
    loss: list[float]
    lr: list[float | None]


@dataclass(frozen=True)
class StageUse:
    stage: str
    attempts: int
    elapsed_s: float
    nodes: int
    node_hours: float
    accel_hours: float
    cpu_efficiency: float | None
    max_rss_bytes: int | None
    cost: float | None


@dataclass
class Report:
    run_id: str
    pipeline: str
    cluster: str
    scheduler: str
    run_dir: Path
    states: dict[str, str]
    spans: list[Span] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    usage: list[StageUse] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # stage -> its experiment tracker run (stages/tracking.py)


def spans_of(stage: str, attempt: Attempt, records: list[dict[str, Any]], now: datetime) -> list[Span]:
    """Queue wait then run, once per restart: the job wrapper's records give each restart's start and end."""
    runs = [(status.parse_time(r.get("start")), status.parse_time(r.get("end"))) for r in records]
    if not runs and attempt.start:
        runs = [(status.parse_time(attempt.start), status.parse_time(attempt.end))]
    cursor = status.parse_time(attempt.submitted) or now
    out: list[Span] = []
    for i, (start, end) in enumerate(runs):
        if start is None:
            continue
        if start > cursor:
            out.append(Span(stage, attempt.job_id, "pending", cursor, start, "pending"))
        last = i == len(runs) - 1
        finish = end or (now if last and not attempt.state.terminal else start)
        if last and end is None and attempt.state.terminal:
            finish = status.parse_time(attempt.end) or start
        out.append(Span(stage, attempt.job_id, "running", start, finish,
                        attempt.state.value if last else "requeued"))
        cursor = finish
    if not out:  # never started: waiting still, or cancelled/failed while waiting
        end = now if not attempt.state.terminal else (status.parse_time(attempt.end) or cursor)
        out.append(Span(stage, attempt.job_id, "pending", cursor, max(end, cursor), attempt.state.value))
    return out


def curves_of(paths: RunPaths, stage: str, job_id: str) -> list[Curve]:
    by_restart: dict[int, list[dict[str, Any]]] = {}
    for row in metric_rows(paths, stage, job_id):
        if isinstance(row.get("step"), int) and isinstance(row.get("loss"), (int, float)):
            by_restart.setdefault(int(row.get("restart", 0)), []).append(row)
    short = short_id(job_id)
    return [Curve(stage, f"{stage} job {short}" + (f" restart {r}" if r else ""), [x["step"] for x in rows],
                  [float(x["loss"]) for x in rows], [x.get("lr") for x in rows])
            for r, rows in sorted(by_restart.items())]


def is_failure(state: str) -> bool:
    return state not in (JobState.COMPLETED.value, JobState.RUNNING.value, JobState.PENDING.value,
                         JobState.HELD.value, "requeued", "pending")
