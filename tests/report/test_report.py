"""`pipeline report` on a real local run: the timeline, curves across attempts, the evaluation and the resource
table come from what the run directory holds; the page is self-contained (no network at view time)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from orchestrator import report
from orchestrator.scheduler.slurm import parse_usage
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]


def test_report_of_a_failed_then_resumed_run(two_attempt_run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert run_cli("report", two_attempt_run.name, "--out", str(out)) == 0
    page, png = out / "report.html", out / "report.png"
    assert capsys.readouterr().out.split() == [str(page), str(png)]
    text = page.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # self-contained: no script, stylesheet or image fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text) and "<script" not in text
    assert text.count("<svg") == 1 and text.count("<path") > 50

    rep = report.collect(two_attempt_run)
    train = [s for s in rep.spans if s.stage == "train" and s.kind == "running"]
    assert [s.outcome for s in train] == ["FAILED", "COMPLETED"]
    assert [(c.steps[0], c.steps[-1]) for c in rep.curves] == [(1, 5), (6, 10)]  # the resume continues the curve
    assert rep.curves[1].lr[-1] == 1e-4
    assert [name for name, _ in rep.evals] == ["evaluate"] and rep.evals[0][1]["passed"] is True
    assert "passed" in text and ">0.6<" in text
    use = {u.stage: u for u in rep.usage}
    assert use["train"].attempts == 2 and use["train"].elapsed_s > 0 and use["train"].nodes == 1
    assert use["train"].max_rss_bytes and use["train"].max_rss_bytes > 1 << 20  # a Python process: MiBs
    assert use["train"].cpu_efficiency is not None and 0 < use["train"].cpu_efficiency <= 1
    assert abs(use["train"].cost - use["train"].node_hours * 3.6) < 1e-9  # the profile's node-hour price


def test_missing_matplotlib_says_how_to_install(two_attempt_run):
    """The orchestrator runs without the report extra: the verb says what to install instead of a traceback."""
    code = ("import sys; sys.modules['matplotlib'] = None; from orchestrator import cli; "
            f"sys.exit(cli.main(['report', {str(two_attempt_run)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          check=False)
    assert done.returncode == 1
    assert "needs matplotlib" in done.stderr and "pip install -e '.[report]'" in done.stderr


def test_sacct_usage_is_parsed_per_job_with_the_largest_step_rss():
    """sacct -n -P -o JobIDRaw,ElapsedRaw,NNodes,AllocTRES,TotalCPU,CPUTimeRAW,MaxRSS (Slurm 22.05 sacct(1)):
    the allocation line carries elapsed, nodes, TRES and TotalCPU; MaxRSS is only on the step lines."""
    text = ("41|120|2|billing=16,cpu=16,gres/gpu=8,mem=64G,node=2|15:00.500|1920|\n"
            "41.batch|120|1|cpu=8,mem=32G,node=1|00:01.000|960|2048K\n"
            "41.0|118|2|cpu=16,gres/gpu=8,node=2|14:59.500|1888|1.5G\n"
            "42|5|1|cpu=1,node=1|1-00:00:01|86400|\n")
    found = parse_usage(text)
    assert found["41"].elapsed_s == 120 and found["41"].nodes == 2 and found["41"].alloc_tres["gres/gpu"] == "8"
    assert found["41"].total_cpu_s == 900.5 and found["41"].cpu_time_s == 1920
    assert found["41"].max_rss_bytes == int(1.5 * 1024 ** 3)
    assert found["42"].total_cpu_s == 86401 and found["42"].max_rss_bytes is None


def test_several_evaluate_reports_one_row_each_and_the_best_marked(tmp_path):
    """A sweep's variants each write their own reports/<name>.json (stages/evaluate.py's layout)."""
    for name, loss in (("evaluate-r8", 1.4), ("evaluate-r16", 1.1), ("evaluate-r32", 1.3)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"tuned": {"loss": loss}, "base": {"loss": 2.0},
                                                           "loss_ratio": loss / 2, "passed": True}))
    (tmp_path / "inference.json").write_text(json.dumps({"answers": []}))  # not an evaluation: left out
    found = report.evaluations(tmp_path)
    assert [name for name, _ in found] == ["evaluate-r16", "evaluate-r32", "evaluate-r8"]
    rows = report.eval_table(found).split("<tr")[2:]
    assert [("(best)" in row) for row in rows] == [True, False, False]


def test_tracker_link_is_a_link_only_for_web_addresses() -> None:
    """An MLflow URL becomes a link; W&B offline's `wandb sync <dir>` hint is shown as code, not a dead link."""
    from orchestrator.report.page import _link

    assert _link("http://mlflow:5000/#/runs/1") == '<a href="http://mlflow:5000/#/runs/1">http://mlflow:5000/#/runs/1</a>'
    assert _link("wandb sync /runs/r/wandb/ft") == "<code>wandb sync /runs/r/wandb/ft</code>"
    assert "<a" not in _link('wandb sync "/x<y>"') and "&lt;y&gt;" in _link('wandb sync "/x<y>"')
