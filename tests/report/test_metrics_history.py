"""Metrics history: every logged step appended to records/<stage>/metrics.<job>.jsonl by the stage program
(stages/common.py metric, written by stages/history.py), per attempt, tagged with the job id, rank 0 only,
bounded in size."""

from __future__ import annotations

import json
import sys

from orchestrator.state import RunPaths, Store
from stages import common, history
from tests.helpers import latest_run, run_cli, wait_terminal


def test_the_file_stays_under_its_cap_and_keeps_first_last_and_eval(tmp_path):
    path = tmp_path / "m.jsonl"
    cap = 32 << 10
    history.append_bounded(path, json.dumps({"event": "evaluate", "loss": 1.0}), cap)
    sizes = []
    for step in range(1, 50_001):  # ~3.5 MB written in full; a week of steps scaled down
        history.append_bounded(path, json.dumps({"step": step, "loss": 1.0 / step, "lr": 1e-4}), cap)
        sizes.append(path.stat().st_size)
    assert max(sizes) <= cap + 80  # never more than the cap plus the line that tipped it
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [line["step"] for line in lines if "step" in line]
    assert steps[0] == 1 and steps[-1] == 50_000
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert 200 < len(steps) < 1000  # thinned, not emptied
    assert any(line.get("event") == "evaluate" for line in lines)


def test_rank_zero_only_and_tagged(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("PIPELINE_METRICS_FILE", str(target))
    monkeypatch.setenv("PIPELINE_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    monkeypatch.setenv("RANK", "1")
    common.metric(step=1, loss=3.0)
    assert not target.exists()
    monkeypatch.setenv("RANK", "0")
    common.metric(step=1, loss=3.0)
    line = json.loads(target.read_text())
    assert line["job_id"] == "77" and line["restart"] == 2 and line["step"] == 1 and line["time"] > 0


def test_the_job_wrapper_points_each_attempt_at_its_own_file(write_spec):
    """A real local run: the stage program's metric() lands in the run directory under the attempt's job id."""
    path = write_spec(f"""
        name: metrics
        stages:
          - {{name: a, kind: command, run: "{sys.executable} -c 'from stages.common import metric; [metric(step=s, loss=1.0/s) for s in (1, 2, 3)]'"}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    wait_terminal(run_dir)
    job_id = Store(run_dir).read().stages["a"].current.job_id
    lines = [json.loads(x) for x in RunPaths(run_dir).metrics("a", job_id).read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and {x["job_id"] for x in lines} == {job_id}
