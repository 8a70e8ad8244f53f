"""This attempt's metrics history (PIPELINE_METRICS_FILE, JSON lines read by `pipeline report`): appended by
rank 0 only, bounded in size by thinning the step lines, never truncated."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

METRICS_MAX_BYTES = 4 << 20  # ~30k step lines: a week at one line a second is thinned to this, not 90 MB


def note(**fields: Any) -> None:
    """One line of the metrics history, for the report only (e.g. where the tracker keeps this run)."""
    target = os.environ.get("PIPELINE_METRICS_FILE")
    if target and int(os.environ.get("RANK", "0")) == 0:
        line = {"job_id": os.environ.get("PIPELINE_JOB_ID"),
                "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0), "time": round(time.time(), 3),
                **fields}
        append_bounded(Path(target), json.dumps(line, sort_keys=True), METRICS_MAX_BYTES)


def append_bounded(path: Path, line: str, max_bytes: int) -> None:
    """Append a JSONL line; past max_bytes, thin the step lines to every other one (the first, the last and
    every line without a step, e.g. eval results, stay). Repeated thinning keeps the file under max_bytes
    with the older part of the curve sparser, never truncated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    if path.stat().st_size <= max_bytes:
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    stepped = [i for i, text in enumerate(lines) if '"step":' in text]
    drop = set(stepped[1:-1:2])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(text + "\n" for i, text in enumerate(lines) if i not in drop), encoding="utf-8")
    os.replace(tmp, path)
