"""What jobs write into the run directory, read back for status and report: the job wrapper's records of
each restart, the stage programs' progress and metrics history (loss, lr, tracker link), evaluate reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.errors import StateError
from orchestrator.state import Attempt, RunPaths


def job_records(paths: RunPaths, stage: str, job_id: str) -> list[dict[str, Any]]:
    found = []
    for path in paths.job_records(stage, job_id):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: int(r.get("restarts", 0)))


def metric_rows(paths: RunPaths, stage: str, job_id: str) -> list[dict[str, Any]]:
    try:
        text = paths.metrics(stage, job_id).read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line while the job writes
        if isinstance(row, dict):
            rows.append(row)
    return rows


def links_of(paths: RunPaths, stage: str, job_id: str) -> dict[str, str]:
    urls = [str(row["url"]) for row in metric_rows(paths, stage, job_id)
            if row.get("event") == "tracking" and isinstance(row.get("url"), str)]
    return {stage: urls[-1]} if urls else {}


def evaluations(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every evaluate report (stages/evaluate.py: tuned, base, loss_ratio, passed), one row per file."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("tuned"), dict):
            found.append((path.stem, data))
    return found


def latest_record(paths: RunPaths, stage: str, job_id: str) -> dict[str, Any] | None:
    candidates = paths.job_records(stage, job_id)
    if not candidates:
        return None
    try:
        data: dict[str, Any] = json.loads(candidates[-1].read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        raise StateError(f"{candidates[-1]} is unreadable") from None


def progress(paths: RunPaths, stage: str, attempt: Attempt | None) -> dict[str, Any] | None:
    """What the current attempt's program last said of its progress, or None. Advisory: a missing, torn or
    older attempt's file never fails status (the program writes it, not the scheduler)."""
    if attempt is None:
        return None
    try:
        data = json.loads(paths.progress(stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("job_id") == attempt.job_id else None


def tracking_link(paths: RunPaths, stage: str, attempt: Attempt | None) -> str | None:
    """Where the experiment tracker shows this attempt (stages/tracking.py notes it in the metrics history)."""
    return links_of(paths, stage, attempt.job_id).get(stage) if attempt else None


def progress_note(data: dict[str, Any] | None) -> str:
    if not data or "step" not in data:
        return ""
    parts = [f"step {data['step']}" + (f"/{data['steps']}" if data.get("steps") else "")]
    if isinstance(data.get("loss"), (int, float)):
        parts.append(f"loss {data['loss']:.4g}")
    if isinstance(data.get("tokens_per_s"), (int, float)):
        parts.append(f"{data['tokens_per_s']:,.0f} tok/s")
    return " ".join(parts)
