"""tune-report: the result files of torchtune 0.6.1's eleuther_eval and generate recipes, from their logs.

Neither recipe writes a result file: recipes/eleuther_eval.py logs lm_eval's `make_table(output)` (markdown,
lm_eval 0.4.8 lm_eval/utils.py: one row per metric, the task name only on its first row), and
recipes/generate.py logs the decoded text as one record just before "Time for inference: ...". The stage tees
the recipe's output to a log and this program turns it into a report the next stage (or a person) can read.

    python -m stages tune-report --eval LOG --output metrics.json [--min-score S --task T]
    python -m stages tune-report --generated LOG --output generated.txt
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from stages.common import StageError, entry, log, write_json

# torchtune's logger (torchtune/utils/_logging.py get_logger) writes "LEVEL:torchtune.utils._logging:message".
RECORD = re.compile(r"^[A-Z]+:torchtune\.utils\._logging:")


def eval_metrics(text: str) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from the markdown table(s) lm_eval's make_table wrote into the log."""
    results: dict[str, dict[str, float]] = {}
    header: list[str] | None = None
    task = ""
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "Tasks" in cells and "Metric" in cells and "Value" in cells:
            header = cells
            continue
        if header is None or set(line) <= set("|-: "):
            continue
        row = dict(zip(header, cells))
        task = row["Tasks"].lstrip(" -") or task
        try:
            results.setdefault(task, {})[row["Metric"]] = float(row["Value"])
        except ValueError:
            continue  # "N/A" for a metric lm_eval could not compute
    return results


def generated_text(text: str) -> str:
    """The record the generate recipe logged right before its "Time for inference" record (it may span lines)."""
    lines = text.splitlines()
    end = next((i for i in range(len(lines) - 1, -1, -1) if RECORD.match(lines[i])
                and "Time for inference:" in lines[i]), None)
    if end is None:
        raise StageError("no 'Time for inference' line in the generate recipe's log: did generation finish?")
    start = next((i for i in range(end - 1, -1, -1) if RECORD.match(lines[i])), None)
    if start is None:
        raise StageError("the generate recipe's log has no generated text before 'Time for inference'")
    first = RECORD.sub("", lines[start])
    return "\n".join([first, *lines[start + 1:end]])


def check_score(metrics: dict[str, dict[str, float]], task: str, minimum: float) -> None:
    acc = metrics.get(task, {}).get("acc")
    if acc is None:
        raise StageError(f"task {task!r} reported no acc metric (reported: {metrics})",
                         "min_score compares the first task's acc; drop min_score for tasks without one")
    if acc < minimum:
        raise StageError(f"{task} acc {acc:.4f} is below min_score {minimum}", "the tuned model did not pass")
    log(f"{task} acc {acc:.4f} >= min_score {minimum}")


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages tune-report")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--eval", type=Path, metavar="LOG")
    source.add_argument("--generated", type=Path, metavar="LOG")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--min-score", type=float)
    p.add_argument("--task")
    args = p.parse_args(argv)
    path: Path = args.eval or args.generated
    if not path.is_file():
        raise StageError(f"{path}: no recipe log")
    text = path.read_text(encoding="utf-8", errors="replace")
    if args.generated is not None:
        generated = generated_text(text)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(generated + "\n", encoding="utf-8")
        log(f"generated text -> {args.output}")
        return 0
    metrics = eval_metrics(text)
    if not metrics:
        raise StageError(f"{path}: no lm_eval results table in the eleuther_eval log", "see the log for the cause")
    write_json(args.output, metrics)
    log(f"eval metrics -> {args.output}: {metrics}")
    if args.min_score is not None:
        if not args.task:
            raise StageError("--min-score needs --task")
        check_score(metrics, args.task, args.min_score)
    return 0
