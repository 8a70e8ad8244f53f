"""Stage progress as status shows it: only the current attempt's, never an error when absent or torn."""

from __future__ import annotations

import json

from orchestrator import status
from orchestrator.state import Attempt, RunPaths


def write(paths: RunPaths, text: str) -> None:
    paths.progress("finetune").parent.mkdir(parents=True, exist_ok=True)
    paths.progress("finetune").write_text(text)


def test_current_attempts_progress_is_shown(tmp_path):
    paths = RunPaths(tmp_path)
    write(paths, json.dumps({"job_id": "12", "step": 40, "steps": 120, "loss": 1.23456, "tokens_per_s": 2100.4}))
    data = status.progress(paths, "finetune", Attempt(job_id="12"))
    assert status.progress_note(data) == "step 40/120 loss 1.235 2,100 tok/s"


def test_an_older_attempts_file_is_ignored(tmp_path):
    paths = RunPaths(tmp_path)
    write(paths, json.dumps({"job_id": "12", "step": 120, "steps": 120}))
    assert status.progress(paths, "finetune", Attempt(job_id="13")) is None


def test_missing_or_torn_files_are_no_progress(tmp_path):
    paths = RunPaths(tmp_path)
    assert status.progress(paths, "finetune", Attempt(job_id="1")) is None
    write(paths, '{"job_id": "1", "st')
    assert status.progress(paths, "finetune", Attempt(job_id="1")) is None
    assert status.progress_note(None) == "" and status.progress_note({"job_id": "1"}) == ""
