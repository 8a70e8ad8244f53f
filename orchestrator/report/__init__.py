"""`pipeline report RUN`: one self-contained HTML page (inline SVG, no network at view time) and a PNG of the
same figures: where the hours went (pending vs running per attempt, requeues, failures), the loss and learning-rate
curves across attempts, the evaluate stage's verdict, and a resource/cost table per stage.

Everything comes from the run directory (state.json, the job wrapper's records, the stage programs' metrics
history, work/reports/*.json) plus, on Slurm, one batched sacct call for what each job used.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from orchestrator import status
from orchestrator.errors import PipelineError
from orchestrator.jobfiles import evaluations, job_records, links_of
from orchestrator.report.model import Report, curves_of, spans_of
from orchestrator.report.page import eval_table, to_html
from orchestrator.report.usage import resource_table
from orchestrator.state import RunPaths

__all__ = ["INSTALL_HINT", "Report", "collect", "eval_table", "evaluations", "write"]

INSTALL_HINT = "install the report extra: .venv/bin/pip install -e '.[report]' (./dev does)"


def collect(run_dir: Path) -> Report:
    view = status.refresh([run_dir])[0]
    paths = RunPaths(run_dir)
    plan = paths.plan_json()
    st = view.state
    rep = Report(st.run_id, st.pipeline, st.cluster, st.scheduler, run_dir,
                 {n: s.state.value for n, s in st.stages.items()})
    if view.warning:
        rep.notes.append(view.warning)
    now = datetime.now(timezone.utc)
    for name, stage in st.stages.items():
        for attempt in stage.attempts:
            rep.spans.extend(spans_of(name, attempt, job_records(paths, name, attempt.job_id), now))
            rep.curves.extend(curves_of(paths, name, attempt.job_id))
            rep.links.update(links_of(paths, name, attempt.job_id))
    workdir = paths.workdir(plan.get("workdir"))
    rep.evals = evaluations(workdir / "reports")
    rep.usage = resource_table(rep, plan, st.stages, paths)
    return rep


def write(run_dir: Path, out: Path) -> tuple[Path, Path]:
    """Collect, draw and write report.html + report.png into out; returns their paths."""
    try:
        from orchestrator.report.figures import draw, svg
    except ImportError as exc:
        raise PipelineError(f"`pipeline report` needs matplotlib ({exc})", INSTALL_HINT) from None
    rep = collect(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = draw(rep)
    png = out / "report.png"
    fig.savefig(png, format="png", dpi=110)
    page = out / "report.html"
    page.write_text(to_html(rep, svg(fig)), encoding="utf-8")
    return page, png
