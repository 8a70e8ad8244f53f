"""nxd-data for real: the folder it writes is read the way NxD 2.28's trainer reads a local --data_dir
(examples/training/llama/training_utils.py create_instruction_based_dataset: datasets.load_from_disk(dir)["train"],
then the rows whose category is --task; fixture `data` in tests/fixtures/neuronx_distributed_2_28.json), with the
real `datasets`, and none of its rows is one that `stages evaluate` holds out of --rows with the same fraction and
seed (its own loader, stages.data.load, is called here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages import data as datalib
from tests.conftest import REPO
from tests.stages.conftest import DATA, stage

FACTS = json.loads((REPO / "tests" / "fixtures" / "neuronx_distributed_2_28.json").read_text())["data"]


class Eos:
    eos_token = "</s>"


def prepare(tmp_path: Path, *extra: str, data: Path = DATA, check: bool = True):
    return stage("nxd-data", "--data", str(data), "--task", "open_qa", "--eval-fraction", "0.1", "--seed", "42",
                 "--rows", str(tmp_path / "task_rows.jsonl"), "--train-dir", str(tmp_path / "nxd_train"), *extra,
                 check=check)


def test_trainer_split_excludes_exactly_the_rows_evaluate_holds_out(tmp_path):
    datasets = pytest.importorskip("datasets")
    prepare(tmp_path)
    source = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    task = [r for r in source if r["category"] == "open_qa"]
    rows = [json.loads(line) for line in (tmp_path / "task_rows.jsonl").read_text().splitlines()]
    assert rows == task  # the task's rows, in source order

    # As the NxD trainer reads it (fixture data): load_from_disk(dir)["train"], filtered by category == task.
    train = datasets.load_from_disk(str(tmp_path / "nxd_train"))[FACTS["local_dir_split"]]
    train = train.filter(lambda example: example[FACTS["filter_column"]] == "open_qa")
    trained = [(r["instruction"], r["context"], r["response"]) for r in train]

    # As `stages evaluate --data task_rows.jsonl --eval-fraction 0.1 --seed 42` splits it (its loader, unchanged).
    _, held_out = datalib.load(tmp_path / "task_rows.jsonl", "dolly", Eos(), 0.1, 42)
    _, held = datalib.split(list(range(len(task))), 0.1, 42)
    assert [e.prompt for e in held_out] == [datalib.dolly_prompt(task[i]["instruction"], task[i]["context"])
                                            for i in held]
    key = [(r["instruction"], r["context"], r["response"]) for r in task]
    unseen = {key[i] for i in held}
    assert trained == [key[i] for i in range(len(task)) if i not in held and key[i] not in unseen]
    copies = sum(1 for i in range(len(task)) if i not in held and key[i] in unseen)
    assert copies > 0  # the tiny set repeats some rows: their copies were dropped from training
    summary = json.loads((tmp_path / "nxd_train.json").read_text())
    assert summary == {"task": "open_qa", "rows": len(task), "train": len(trained), "held_out": len(held),
                       "held_out_copies_dropped": copies, "eval_fraction": 0.1, "seed": 42}


def test_unknown_task_and_missing_category_are_named(tmp_path):
    out = stage("nxd-data", "--data", str(DATA), "--task", "open-qa", "--eval-fraction", "0.1", "--seed", "1",
                "--rows", str(tmp_path / "r.jsonl"), "--train-dir", str(tmp_path / "t"), check=False)
    assert out.returncode == 2 and "no row has category 'open-qa'" in out.stderr and "open_qa" in out.stderr
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"instruction": "a", "response": "b"}) + "\n")
    out = prepare(tmp_path, data=plain, check=False)
    assert out.returncode == 2 and f"{plain}:1: no `category` column" in out.stderr
    assert not (tmp_path / "nxd_train").exists()
