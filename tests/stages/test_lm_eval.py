"""The evaluate stage's optional lm-evaluation-harness run: the shipped offline tasks, errors, no lm_eval."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.stages.conftest import DATA, stage

TASKS = REPO / "examples" / "lm-eval-tasks"
LIMIT = 4
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="no lm_eval: pip install lm_eval==0.4.8 (the `eval` extra)")


def data_rows() -> int:
    return sum(1 for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip())


def assert_real(value: object) -> float:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), value
    assert math.isfinite(value), value
    return float(value)


@needs_lm_eval
def test_shipped_task_metrics_land_in_the_report(tiny: Path, tmp_path: Path) -> None:
    # Run from an unrelated folder with a relative --report: the task's `../data/...` must still resolve (the
    # stage runs lm_eval inside the include folder) and the report must land where the caller meant.
    # The base is the model itself and 0.5 is unreachable, so the loss verdict must still fail (exit 3).
    out = stage("evaluate", "--model", str(tiny), "--compare-to", str(tiny), "--data", str(DATA),
                "--seq-len", "128", "--max-loss-ratio", "0.5", "--report", "reports/eval.json",
                "--lm-eval-tasks", "dolly_tiny", "dolly_tiny_gen", "--lm-eval-include-path", str(TASKS),
                "--lm-eval-limit", str(LIMIT), "--lm-eval-batch-size", "4", cwd=tmp_path, check=False)
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads((tmp_path / "reports" / "eval.json").read_text())
    assert report["passed"] is False and report["loss_ratio"] == pytest.approx(1.0)  # verdict untouched
    harness = report["lm_eval"]
    assert harness["lm_eval_version"] == "0.4.8" and harness["limit"] == LIMIT
    assert harness["device"] in ("cpu", "cuda") and harness["adapter"] is None
    assert harness["model"] == str(tiny.resolve()) and harness["include_path"] == str(TASKS.resolve())
    tasks = harness["tasks"]
    assert set(tasks) == {"dolly_tiny", "dolly_tiny_gen"}
    for name, task in tasks.items():
        assert task["n_samples"] == {"original": data_rows(), "effective": LIMIT}, name
        assert task["num_fewshot"] == 0 and task["version"] == 1.0, name
    scored = tasks["dolly_tiny"]["metrics"]
    assert set(scored) == {"perplexity,none", "perplexity_stderr,none", "acc,none", "acc_stderr,none"}
    assert assert_real(scored["perplexity,none"]) > 1  # an untrained model cannot be certain of the answers
    assert 0 <= assert_real(scored["acc,none"]) <= 1 and assert_real(scored["acc_stderr,none"]) >= 0
    assert_real(scored["perplexity_stderr,none"])
    generated = tasks["dolly_tiny_gen"]["metrics"]
    assert set(generated) == {"exact_match,none", "exact_match_stderr,none"}
    assert 0 <= assert_real(generated["exact_match,none"]) <= 1
    assert tasks["dolly_tiny"]["higher_is_better"] == {"perplexity": False, "acc": True}
    assert "lm_eval dolly_tiny: perplexity,none" in out.stdout


@needs_lm_eval
def test_unknown_task_is_named(tiny: Path, tmp_path: Path) -> None:
    out = stage("evaluate", "--model", str(tiny), "--data", str(DATA), "--report", str(tmp_path / "r.json"),
                "--lm-eval-tasks", "dolly_tiny", "no_such_task_xyz", "--lm-eval-include-path", str(TASKS),
                check=False)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "no_such_task_xyz" in out.stderr and str(TASKS.resolve()) in out.stderr
    assert "dolly_tiny," not in out.stderr  # only the missing name is reported
    assert "Traceback" not in out.stderr and not (tmp_path / "r.json").exists()


def test_missing_lm_eval_says_how_to_install(tiny: Path, tmp_path: Path) -> None:
    # A package named lm_eval that fails to import stands in for an environment without the `eval` extra.
    fake = tmp_path / "fake" / "lm_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ModuleNotFoundError("no lm_eval", name="lm_eval")\n')
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO}"}
    argv = ["evaluate", "--model", str(tiny), "--data", str(DATA), "--report", str(tmp_path / "r.json"),
            "--lm-eval-tasks", "dolly_tiny"]
    out = subprocess.run([sys.executable, "-m", "stages", *argv], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert out.returncode == 2 and "pip install lm_eval==0.4.8" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "r.json").exists()


def test_lm_eval_options_need_tasks(tiny: Path, tmp_path: Path) -> None:
    out = stage("evaluate", "--model", str(tiny), "--data", str(DATA), "--report", str(tmp_path / "r.json"),
                "--lm-eval-limit", "3", check=False)
    assert out.returncode == 2 and "need --lm-eval-tasks" in out.stderr
