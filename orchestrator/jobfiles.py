"""What jobs write into the run directory, read back for status and report: the job wrapper's records of
each restart, the stage programs' metrics history (loss, lr, tracker link), evaluate reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.state import RunPaths


def job_records(paths: RunPaths, stage: str, job_id: str) -> list[dict[str, Any]]:
    found = []
    for path in paths.records(stage).glob(f"{job_id.replace('/', '_')}.*.json"):
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
