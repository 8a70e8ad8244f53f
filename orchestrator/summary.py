"""`python -m orchestrator.summary [RUN]`: what a person reads at a glance when a demo run ends — the evaluate
verdict and loss ratio, base vs tuned answers side by side, and where the merged model and the reports are.

Reads only the run's state file and the reports the hf family's evaluate and inference stages write
(stages/evaluate.py, stages/inference.py); no torch. `./dev demo` prints it after `pipeline submit --wait`.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from orchestrator.errors import PipelineError
from orchestrator.state import RunPaths, Store, find_run

WIDTH = 46  # each answer column: two side by side fit an 100-column terminal


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _columns(left: str, right: str, indent: str = "    ") -> list[str]:
    a = textwrap.wrap(left, WIDTH) or ["(empty)"]
    b = textwrap.wrap(right, WIDTH) or ["(empty)"]
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return [f"{indent}{x:<{WIDTH}}  | {y}" for x, y in zip(a, b)]


def verdict_lines(report: Any) -> list[str]:
    if not isinstance(report, dict) or "loss_ratio" not in report:
        return ["verdict: no evaluate report (the evaluate stage did not finish)"]
    word = "PASSED" if report.get("passed") else "FAILED"
    line = (f"verdict: {word}  held-out loss tuned {report['tuned']['loss']:.3f} vs base {report['base']['loss']:.3f}"
            f" = ratio {report['loss_ratio']:.3f} (must be < {report['max_loss_ratio']}; "
            f"{report['tuned']['eval_rows']} rows never trained on)")
    return [line]


def generation_lines(report: Any) -> list[str]:
    if not isinstance(report, dict) or not report.get("generations"):
        return ["generations: no inference report (the inference stage did not finish)"]
    lines = []
    if report.get("system_prompt"):
        lines.append(f"system prompt: {report['system_prompt']}")
    for row in report["generations"]:
        lines.append(f"  Q: {row['prompt']}")
        lines.append(f"    {'base':<{WIDTH}}  | tuned")
        lines.extend(_columns(" ".join(row["base"].split()), " ".join(row["tuned"].split())))
    return lines


def summary(run_dir: Path) -> str:
    state = Store(run_dir).read()
    work = RunPaths(run_dir).workdir(state.workdir)
    reports = work / "reports"
    lines = [f"=== summary of run {state.run_id} ({state.pipeline})"]
    lines += verdict_lines(_read(reports / "evaluate.json"))
    lines += generation_lines(_read(reports / "inference.json"))
    lines.append(f"merged model: {work / 'merged'}")
    lines.append(f"reports:      {reports}/ (evaluate.json, inference.json); logs: {RunPaths(run_dir).logs}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        print(summary(find_run(argv[0] if argv else None)))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
