"""The report as one self-contained HTML page: states, notes, tracker links, the figures as inline SVG, the
evaluation and resource tables."""

from __future__ import annotations

import html
from typing import Any

from orchestrator.report.model import Report, StageUse


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
