"""The report's figures, drawn with matplotlib (the `report` extra): one Figure, saved as inline SVG and as PNG.

matplotlib's object API only (Figure + FigureCanvasAgg, no pyplot): no global state, no display needed
(matplotlib docs, "Embed in a web application server": create figures with Figure, not pyplot).
"""

from __future__ import annotations

import io
from datetime import timedelta

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orchestrator.report.model import Report, is_failure

COLOURS = {"COMPLETED": "#2e7d32", "RUNNING": "#1565c0", "CANCELLED": "#9e9e9e", "requeued": "#ef6c00"}
FAILED = "#c62828"
PENDING = "#e0e0e0"


def draw(rep: Report) -> Figure:
    rows = [("timeline", 1.0 + 0.35 * len(rep.states))]
    if rep.curves:
        rows += [("loss", 2.6), ("lr", 1.8)]
    if rep.evals:
        rows.append(("eval", 2.2))
    fig = Figure(figsize=(11, sum(h for _, h in rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 1, gridspec_kw={"height_ratios": [h for _, h in rows]}, squeeze=False)[:, 0]
    for (kind, _), ax in zip(rows, axes):
        {"timeline": timeline, "loss": loss, "lr": learning_rate, "eval": evaluation}[kind](ax, rep)
    fig.suptitle(f"{rep.run_id}  ({rep.pipeline} on {rep.cluster})", fontsize=11)
    return fig


def svg(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline: drop the XML prolog and DOCTYPE


def timeline(ax: Axes, rep: Report) -> None:
    """Gantt: one row per stage, grey while queued, coloured while running (by how the attempt ended); an x
    marks a failure, a triangle a requeue."""
    names = list(rep.states)
    origin = min((s.start for s in rep.spans), default=None)
    if origin is None:
        ax.text(0.5, 0.5, "nothing submitted", ha="center", transform=ax.transAxes)
        return
    scale, unit = _unit(max(s.end for s in rep.spans) - origin)
    least = (max(s.end for s in rep.spans) - origin).total_seconds() / scale / 150  # a 1 s run stays visible
    for span in rep.spans:
        y = names.index(span.stage)
        left, width = (span.start - origin).total_seconds() / scale, (span.end - span.start).total_seconds() / scale
        if span.kind == "pending":
            ax.barh(y, max(width, least), left=left, height=0.35, color=PENDING, edgecolor="#bdbdbd")
            continue
        colour = FAILED if is_failure(span.outcome) else COLOURS.get(span.outcome, FAILED)
        width = max(width, least)
        ax.barh(y, width, left=left, height=0.6, color=colour)
        if span.outcome == "requeued":
            ax.plot(left + width, y, marker="v", color=COLOURS["requeued"], markersize=8)
        elif is_failure(span.outcome):
            ax.plot(left + width, y, marker="X", color="black", markersize=9)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit} since the first submission ({origin:%Y-%m-%d %H:%M} UTC)")
    ax.set_title("timeline: grey = pending in the queue, green = completed, red/x = failed, "
                 "orange/v = requeued", fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)


def _unit(span: timedelta) -> tuple[float, str]:
    seconds = span.total_seconds()
    if seconds > 3 * 3600:
        return 3600.0, "hours"
    if seconds > 180:
        return 60.0, "minutes"
    return 1.0, "seconds"


def loss(ax: Axes, rep: Report) -> None:
    for curve in rep.curves:
        ax.plot(curve.steps, curve.loss, label=curve.label, linewidth=1.2)
    ax.set_ylabel("training loss")
    ax.set_title("loss by step across attempts (a resumed attempt continues at its checkpoint's step)",
                 fontsize=9, loc="left")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def learning_rate(ax: Axes, rep: Report) -> None:
    for curve in rep.curves:
        points = [(s, v) for s, v in zip(curve.steps, curve.lr) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=curve.label, linewidth=1.2)
    ax.set_ylabel("learning rate")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def evaluation(ax: Axes, rep: Report) -> None:
    """Held-out loss, base vs tuned, one pair of bars per evaluate report; the title gives the verdict."""
    labels = [name for name, _ in rep.evals]
    base = [float((d.get("base") or {}).get("loss", 0.0)) for _, d in rep.evals]
    tuned = [float(d["tuned"].get("loss", 0.0)) for _, d in rep.evals]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], base, width=0.4, label="base", color="#90a4ae")
    ax.bar([x + 0.2 for x in xs], tuned, width=0.4, label="tuned", color="#5c6bc0")
    ax.set_xticks(list(xs), labels)
    ax.set_xlim(-0.8, len(labels) - 0.2)
    ax.set_ylabel("held-out loss")
    verdicts = [f"{n}: {'passed' if d['passed'] else 'FAILED'} (tuned/base {d.get('loss_ratio', 0):.3f})"
                for n, d in rep.evals if "passed" in d]
    ax.set_title("evaluation: " + ("; ".join(verdicts) or "no base to compare with"), fontsize=9, loc="left")
    ax.legend(fontsize=8)
