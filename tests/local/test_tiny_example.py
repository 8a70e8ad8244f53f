"""examples/tiny-llama-local.yaml end to end on the local cluster (real CPU training): the local backend running the
chain of the README's main job (`./dev demo`, examples/smollm2-local.yaml) on a tiny model; the real SmolLM2 chain
runs in tests/slurm/test_tiny_pipeline_slurm.py."""

from __future__ import annotations

import json

import pytest

from orchestrator import state, summary
from orchestrator.states import JobState
from tests.conftest import REPO
from tests.helpers import latest_run, run_cli, wait_terminal


@pytest.mark.slow
def test_tiny_llama_pipeline_end_to_end(capsys):
    assert run_cli("submit", str(REPO / "examples" / "tiny-llama-local.yaml")) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=600)
    assert set(states.values()) == {JobState.COMPLETED}, states
    work = run_dir / "work"
    report = json.loads((work / "reports" / "evaluate.json").read_text())
    assert report["passed"] and report["tuned"]["loss"] < 0.95 * report["base"]["loss"]
    generations = json.loads((work / "reports" / "inference.json").read_text())["generations"]
    assert [g["prompt"] for g in generations] == ["What is the capital of France?", "Reverse the word: cat"]
    assert (work / "merged" / "model.safetensors").is_file()
    # What ./dev demo prints at the end (orchestrator/summary.py), from this run's real reports.
    text = summary.summary(run_dir)
    assert "verdict: PASSED" in text and f"ratio {report['loss_ratio']:.3f}" in text
    assert "Q: What is the capital of France?" in text and str(work / "merged") in text
    finetune = state.Store(run_dir).read().stages["finetune"].current
    assert finetune.exit_code == 0
    # The program's own progress report, tagged with this attempt's job id, is what status shows for it.
    progress = json.loads(state.RunPaths(run_dir).progress("finetune").read_text())
    assert progress["job_id"] == finetune.job_id and progress["step"] == progress["steps"] > 0
    capsys.readouterr()
    assert run_cli("status") == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("finetune"))
    assert f"step {progress['steps']}/{progress['steps']} loss" in row and "tok/s" in row
