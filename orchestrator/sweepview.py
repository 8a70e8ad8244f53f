"""What `pipeline status` shows of a sweep: a variants x stages matrix, and the variants' evaluate reports side by
side with the best marked (lowest tuned held-out loss, the number stages/evaluate.py's verdict is made of)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.scheduler import short_id
from orchestrator.state import RunPaths, RunState
from orchestrator.sweep import SEP


@dataclass(frozen=True)
class Sweep:
    variants: list[dict[str, Any]]  # plan.json "variants": index, name, values
    bases: list[str]  # per-variant base stages, in plan order
    cells: dict[tuple[str, str], str]  # (variant, base) -> stage name in the state

    @property
    def names(self) -> list[str]:
        return [str(v["name"]) for v in self.variants]


def in_matrix(stage: str) -> bool:
    """A per-variant stage (`finetune@v2`): the matrix shows it."""
    return SEP in stage


def of_run(run_dir: Path) -> Sweep | None:
    try:
        plan = RunPaths(run_dir).plan_json()
    except (OSError, ValueError):
        return None
    if not plan.get("variants"):
        return None
    bases: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for stage in plan["stages"]:
        if stage.get("variant"):
            bases += [stage["base"]] if stage["base"] not in bases else []
            cells[(stage["variant"], stage["base"])] = stage["name"]
    return Sweep(list(plan["variants"]), bases, cells)


def evaluations(run_dir: Path, state: RunState, sweep: Sweep) -> list[dict[str, Any]]:
    """Each variant's evaluate report(s) (`<workdir>/variants/<v>/reports/*.json` with a `tuned` section); the row
    with the lowest tuned loss is marked best."""
    from orchestrator.jobfiles import evaluations as reports

    workdir = RunPaths(run_dir).workdir(state.workdir)
    rows: list[dict[str, Any]] = []
    for variant in sweep.variants:
        for report, data in reports(workdir / "variants" / str(variant["name"]) / "reports"):
            tuned, base = data.get("tuned") or {}, data.get("base") or {}
            rows.append({"variant": variant["name"], "values": variant["values"], "report": report,
                         "tuned_loss": tuned.get("loss"), "base_loss": base.get("loss"),
                         "loss_ratio": data.get("loss_ratio"), "passed": data.get("passed"), "best": False})
    scored = [r for r in rows if isinstance(r["tuned_loss"], (int, float))]
    if scored:
        min(scored, key=lambda r: float(r["tuned_loss"]))["best"] = True
    return rows


def to_json(run_dir: Path, state: RunState) -> dict[str, Any] | None:
    sweep = of_run(run_dir)
    if sweep is None:
        return None
    matrix = {v: {b: state.stages[n].state.value for (vv, b), n in sweep.cells.items() if vv == v}
              for v in sweep.names}
    return {"variants": sweep.variants, "stages": sweep.bases, "matrix": matrix,
            "evaluations": evaluations(run_dir, state, sweep)}


def lines(run_dir: Path, state: RunState) -> list[str]:
    """The matrix and the comparison, for the text status."""
    sweep = of_run(run_dir)
    if sweep is None:
        return []
    width = max(8, *(len(n) for n in sweep.names))
    cols = [max(18, len(b) + 1) for b in sweep.bases]
    out = [f"sweep: {len(sweep.names)} variants x {len(sweep.bases)} per-variant stages (state and job of each)",
           f"  {'VARIANT':<{width}} " + "".join(f"{b:<{c}} " for b, c in zip(sweep.bases, cols)) + "VALUES"]
    for variant in sweep.variants:
        name = str(variant["name"])
        cells = []
        for base, col in zip(sweep.bases, cols):
            stage = state.stages.get(sweep.cells.get((name, base), ""))
            job = short_id(stage.current.job_id) if stage and stage.current else ""
            cells.append(f"{(stage.state.value if stage else '') + ' ' + job:<{col}} ")
        values = ", ".join(f"{k}={v}" for k, v in variant["values"].items())
        out.append(f"  {name:<{width}} " + "".join(cells) + values)
    rows = evaluations(run_dir, state, sweep)
    if rows:
        out.append("evaluate, by variant (lower tuned loss is better; * = best):")
        out.append(f"  {'VARIANT':<{width}} {'TUNED LOSS':>10} {'BASE LOSS':>10} {'RATIO':>7}  VERDICT")
        for row in rows:
            verdict = "" if row["passed"] is None else ("passed" if row["passed"] else "FAILED")
            out.append(f"{'*' if row['best'] else ' '} {row['variant']:<{width}} {_num(row['tuned_loss']):>10} "
                       f"{_num(row['base_loss']):>10} {_num(row['loss_ratio']):>7}  {verdict}")
    return out


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
