"""`pipeline report RUN`: one self-contained HTML page (inline SVG, no network at view time) and a PNG of the
same figures: where the hours went (pending vs running per attempt, requeues, failures), the loss and learning-rate
curves across attempts, the evaluate stage's verdict, and a resource/cost table per stage.

Everything comes from the run directory (state.json, the job wrapper's records, the stage programs' metrics
history, work/reports/*.json) plus, on Slurm, one batched sacct call for what each job used.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator import status
from orchestrator.errors import PipelineError
from orchestrator.scheduler.slurm import SlurmScheduler, Usage
from orchestrator.spec import ClusterProfile
from orchestrator.state import Attempt, RunPaths
from orchestrator.states import JobState

INSTALL_HINT = "install the report extra: .venv/bin/pip install -e '.[report]' (./dev does)"


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


def collect(run_dir: Path) -> Report:
    view = status.refresh([run_dir])[0]
    paths = RunPaths(run_dir)
    plan = json.loads(paths.plan.read_text(encoding="utf-8"))
    st = view.state
    rep = Report(st.run_id, st.pipeline, st.cluster, st.scheduler, run_dir,
                 {n: s.state.value for n, s in st.stages.items()})
    if view.warning:
        rep.notes.append(view.warning)
    now = datetime.now(timezone.utc)
    for name, stage in st.stages.items():
        for attempt in stage.attempts:
            rep.spans.extend(spans_of(name, attempt, _records(paths, name, attempt.job_id), now))
            rep.curves.extend(curves_of(paths, name, attempt.job_id))
            rep.links.update(links_of(paths, name, attempt.job_id))
    workdir = Path(plan["workdir"]) if plan.get("workdir") else paths.workdir_default
    rep.evals = evaluations(workdir / "reports")
    rep.usage = resource_table(rep, plan, st.stages, paths)
    return rep


def _records(paths: RunPaths, stage: str, job_id: str) -> list[dict[str, Any]]:
    found = []
    for path in paths.records(stage).glob(f"{job_id.replace('/', '_')}.*.json"):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: int(r.get("restarts", 0)))


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
    for row in _lines(paths, stage, job_id):
        if isinstance(row.get("step"), int) and isinstance(row.get("loss"), (int, float)):
            by_restart.setdefault(int(row.get("restart", 0)), []).append(row)
    short = job_id.rsplit("/", 1)[-1]
    return [Curve(stage, f"{stage} job {short}" + (f" restart {r}" if r else ""), [x["step"] for x in rows],
                  [float(x["loss"]) for x in rows], [x.get("lr") for x in rows])
            for r, rows in sorted(by_restart.items())]


def _lines(paths: RunPaths, stage: str, job_id: str) -> list[dict[str, Any]]:
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
    urls = [str(row["url"]) for row in _lines(paths, stage, job_id)
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


def resource_table(rep: Report, plan: dict[str, Any], stages: dict[str, Any], paths: RunPaths) -> list[StageUse]:
    cluster = ClusterProfile.model_validate(plan["cluster"])
    ids = [a.job_id for s in stages.values() for a in s.attempts]
    acct: dict[str, Usage] = {}
    if cluster.scheduler == "slurm" and cluster.accounting != "off":
        try:
            acct = SlurmScheduler(paths.root, cluster).usage(ids)
        except PipelineError as exc:
            rep.notes.append(f"sacct gave no usage ({exc.message}); elapsed from the job records only")
    price = _price(plan["cluster"])
    resources = {s["name"]: s["resources"] for s in plan["stages"]}
    return [_stage_use(name, stage.attempts, acct, resources.get(name, {}), paths, price, plan["cluster"])
            for name, stage in stages.items() if stage.attempts]


def _price(cluster: dict[str, Any]) -> float | None:
    prices: dict[str, float] = cluster.get("node_hour_price") or {}
    value = prices.get(cluster.get("instance_type") or "", prices.get("default"))
    return float(value) if value is not None else None


def _accel_per_node(res: dict[str, Any], tres: dict[str, str], nodes: int, cluster: dict[str, Any]) -> float:
    """GPUs or NeuronCores the job held per node: sacct's TRES, else the stage's request, else a Trainium
    profile's NeuronCores (those nodes run one job each)."""
    for key in ("gres/gpu", "gres/neuron", "gres/neuroncore"):
        if tres.get(key, "").isdigit():
            return int(tres[key]) / max(1, nodes)
    if res.get("gpus_per_node"):
        return float(res["gpus_per_node"])
    accel = cluster.get("accelerator") or {}
    return float(accel.get("per_node", 0)) if accel.get("kind") == "neuron" else 0.0


def _stage_use(name: str, attempts: list[Attempt], acct: dict[str, Usage], res: dict[str, Any], paths: RunPaths,
               price: float | None, cluster: dict[str, Any]) -> StageUse:
    elapsed = node_h = accel_h = cpu = held = 0.0
    nodes, rss = 0, None
    for attempt in attempts:
        secs, n, per_node, used_cpu, held_cpu, max_rss = _attempt_use(
            acct.get(attempt.job_id), _records(paths, name, attempt.job_id), res, cluster)
        elapsed, cpu, held = elapsed + secs, cpu + used_cpu, held + held_cpu
        nodes = max(nodes, n)
        node_h += secs * n / 3600
        accel_h += secs * n * per_node / 3600
        rss = max(rss or 0, max_rss) if max_rss is not None else rss
    return StageUse(name, len(attempts), elapsed, nodes, node_h, accel_h, cpu / held if held else None, rss,
                    node_h * price if price is not None else None)


def _attempt_use(used: Usage | None, records: list[dict[str, Any]], res: dict[str, Any],
                 cluster: dict[str, Any]) -> tuple[float, int, float, float, float, int | None]:
    """(seconds, nodes, accelerators per node, CPU seconds used, CPU seconds held, max RSS) of one attempt:
    sacct's numbers where it has them; else the job wrapper's records (its getrusage covers the processes of
    the batch step's node, so on several nodes CPU and RSS there are the first node's)."""
    secs = float(used.elapsed_s) if used else sum(_duration(r) for r in records)
    n = max(1, used.nodes) if used else int(res.get("nodes") or 1)
    per_node = _accel_per_node(res, used.alloc_tres if used else {}, n, cluster)
    if used and used.total_cpu_s and used.cpu_time_s:
        cpu, held = used.total_cpu_s, float(used.cpu_time_s)
    else:
        cpu = sum(float(r.get("cpu_s", 0.0)) for r in records)
        cpus = int(used.alloc_tres.get("cpu", "0") or 0) if used else 0
        held = secs * (cpus or (os.cpu_count() or 1 if cluster.get("scheduler") == "local" else 0))
    kib = [int(r["max_rss_kib"]) for r in records if isinstance(r.get("max_rss_kib"), int)]
    rss = used.max_rss_bytes if used and used.max_rss_bytes else (max(kib) * 1024 if kib else None)
    return secs, n, per_node, cpu, held, rss


def _duration(record: dict[str, Any]) -> float:
    start, end = status.parse_time(record.get("start")), status.parse_time(record.get("end"))
    return max(0.0, (end - start).total_seconds()) if start and end else 0.0


def write(run_dir: Path, out: Path) -> tuple[Path, Path]:
    """Collect, draw and write report.html + report.png into out; returns their paths."""
    try:
        from orchestrator.figures import draw, svg
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


def _link(target: str) -> str:
    """A tracker's web address as a link; anything else (W&B offline: `wandb sync <dir>`) as code to copy."""
    e = html.escape
    if target.startswith(("http://", "https://")):
        return f'<a href="{e(target)}">{e(target)}</a>'
    return f"<code>{e(target)}</code>"


def to_html(rep: Report, svg: str) -> str:
    e = html.escape
    states = " ".join(f'<span class="st {e(v)}">{e(k)}: {e(v)}</span>' for k, v in rep.states.items())
    notes = "".join(f"<p class=note>{e(n)}</p>" for n in rep.notes)
    notes += "".join(f"<p>{e(stage)} in the experiment tracker: {_link(url)}</p>" for stage, url in rep.links.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pipeline report {e(rep.run_id)}</title>
<style>{CSS}</style></head><body>
<h1>{e(rep.run_id)}</h1>
<p>pipeline <b>{e(rep.pipeline)}</b> on cluster <b>{e(rep.cluster)}</b> ({e(rep.scheduler)}) &middot;
<code>{e(str(rep.run_dir))}</code></p>
<p>{states}</p>{notes}
<div class="fig">{svg}</div>
<h2>Evaluation</h2>{eval_table(rep.evals)}
<h2>Resources</h2>{usage_table(rep.usage)}
</body></html>
"""


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.st{margin-right:.8em;white-space:nowrap}
.COMPLETED{color:#1a7f37}.FAILED,.TIMEOUT,.OUT_OF_MEMORY,.NODE_FAIL{color:#c62828}.RUNNING{color:#1565c0}
.fig svg{max-width:100%;height:auto}.note{color:#8a5a00}.best{font-weight:bold;background:#eef8ee}"""


def eval_table(evals: list[tuple[str, dict[str, Any]]]) -> str:
    if not evals:
        return "<p>no evaluate report in work/reports/</p>"
    best = min(evals, key=lambda kv: float(kv[1]["tuned"].get("loss", float("inf"))))[0] if len(evals) > 1 else None
    rows = []
    for name, data in evals:
        base, tuned = data.get("base") or {}, data["tuned"]
        verdict = "" if "passed" not in data else ("passed" if data["passed"] else "FAILED")
        rows.append(f'<tr class="{"best" if name == best else ""}"><td>{html.escape(name)}'
                    f'{" (best)" if name == best else ""}</td><td>{_num(base.get("loss"))}</td>'
                    f'<td>{_num(tuned.get("loss"))}</td><td>{_num(data.get("loss_ratio"))}</td>'
                    f'<td>{_num(data.get("max_loss_ratio"))}</td><td>{_pct(base.get("exact_match"))}</td>'
                    f'<td>{_pct(tuned.get("exact_match"))}</td><td>{verdict}</td></tr>')
    return ("<table><tr><th>report</th><th>base loss</th><th>tuned loss</th><th>tuned/base</th><th>must be &lt;</th>"
            "<th>base exact</th><th>tuned exact</th><th>verdict</th></tr>" + "".join(rows) + "</table>")


def usage_table(usage: list[StageUse]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(u.stage)}</td><td>{u.attempts}</td><td>{_hms(u.elapsed_s)}</td><td>{u.nodes}</td>"
        f"<td>{u.node_hours:.3f}</td><td>{u.accel_hours:.3f}</td><td>{_pct(u.cpu_efficiency)}</td>"
        f"<td>{_size(u.max_rss_bytes)}</td><td>{'' if u.cost is None else f'{u.cost:.2f}'}</td></tr>"
        for u in usage)
    total = sum(u.cost for u in usage if u.cost is not None) if any(u.cost is not None for u in usage) else None
    foot = "" if total is None else f"<tr><th>total</th><td colspan=8>{total:.2f}</td></tr>"
    return ("<table><tr><th>stage</th><th>attempts</th><th>elapsed</th><th>nodes</th><th>node-hours</th>"
            "<th>GPU/NeuronCore-hours</th><th>CPU efficiency</th><th>max RSS</th><th>cost</th></tr>"
            + rows + foot + "</table>")


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _pct(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else ""


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _size(value: int | None) -> str:
    if value is None:
        return ""
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"


def is_failure(state: str) -> bool:
    return state not in (JobState.COMPLETED.value, JobState.RUNNING.value, JobState.PENDING.value,
                         JobState.HELD.value, "requeued", "pending")
