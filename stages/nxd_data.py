"""nxd-data: the NxD Lightning trainer's dataset with an eval split held out of it.

NxD 2.28's examples/training/llama/training_utils.py (create_instruction_based_dataset) reads an existing
directory with `datasets.load_from_disk(dir)["train"]`, keeps the rows whose `category` equals --task and trains
on them (minus 8 random rows for its own ROUGE check). Trained that way on the whole Hub dataset, no row would be
left that the model never saw. This program writes:

- `--rows`: the task's rows (JSONL, in source order): what `python -m stages evaluate` reads;
- `--train-dir`: a DatasetDict with a "train" split = those rows minus the ones `stages evaluate` holds out of
  `--rows` with the same --eval-fraction and --seed (stages.data.split, the one split of the project), and minus
  any copy of a held-out row (datasets repeat rows: a copy in training would flatter the verdict).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from stages import data as datalib
from stages.common import StageError, entry, log, write_json
from stages.fetch_data import write_rows

COLUMNS = ("instruction", "context", "response", "category")  # the Dolly columns the trainer reads


def task_rows(path: Path, task: str) -> list[dict[str, Any]]:
    rows = datalib.read_jsonl(path)
    datalib.validate(path, rows, "dolly")
    missing = next((r for r in rows if "category" not in r), None)
    if missing is not None:
        raise StageError(f"{path}:{missing['_line']}: no `category` column, which the NxD trainer filters --task on",
                         "use a Dolly-style dataset (databricks/databricks-dolly-15k)")
    kept = [r for r in rows if r["category"] == task]
    if not kept:
        found = sorted({str(r["category"]) for r in rows})
        raise StageError(f"{path}: no row has category {task!r}", f"settings.task is one of {', '.join(found)}")
    return kept


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(c) or "") for c in COLUMNS[:3])


def save_train_split(rows: list[dict[str, Any]], target: Path) -> None:
    """A DatasetDict {"train": rows} via save_to_disk, swapped in atomically (a half-written one is never read)."""
    import datasets

    table = {c: [str(r.get(c) or "") for r in rows] for c in COLUMNS}
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table)}).save_to_disk(str(tmp))
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages nxd-data")
    p.add_argument("--data", required=True, type=Path, help="Dolly JSONL (fetch-data's output)")
    p.add_argument("--task", required=True, help="the category the trainer's --task keeps")
    p.add_argument("--eval-fraction", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--rows", required=True, type=Path, help="the task's rows, for `stages evaluate --data`")
    p.add_argument("--train-dir", required=True, type=Path, help="DatasetDict for the trainer's --data_dir")
    args = p.parse_args(argv)
    if not 0 < args.eval_fraction < 1:
        raise StageError(f"--eval-fraction {args.eval_fraction} must be between 0 and 1")
    rows = task_rows(args.data, args.task)
    write_rows(rows, args.rows)
    # Split what evaluate will read back, so both see the same rows in the same order.
    train, held_out = datalib.split(datalib.read_jsonl(args.rows), args.eval_fraction, args.seed)
    seen = {row_key(r) for r in held_out}
    copies = sum(1 for r in train if row_key(r) in seen)
    train = [r for r in train if row_key(r) not in seen]
    if len(train) <= 8:  # the trainer's train_test_split(test_size=8) needs more
        raise StageError(f"{args.rows}: {len(train)} training row(s) after holding out {len(held_out)}",
                         "the NxD trainer needs more than 8; use more data or a smaller eval_fraction")
    save_train_split(train, args.train_dir)
    summary = {"task": args.task, "rows": len(rows), "train": len(train), "held_out": len(held_out),
               "held_out_copies_dropped": copies, "eval_fraction": args.eval_fraction, "seed": args.seed}
    write_json(args.train_dir.with_name(args.train_dir.name + ".json"), summary)
    log(f"{args.task}: {len(rows)} rows -> {len(train)} train ({args.train_dir}), {len(held_out)} held out for "
        f"evaluate ({args.rows}, --eval-fraction {args.eval_fraction} --seed {args.seed}); {copies} copies of "
        "held-out rows dropped from training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
