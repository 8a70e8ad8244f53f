"""stages/evaluate.py places the model where it was trained (issue 10 defect 6): on a GPU node on its GPUs, in the
training dtype, spread by device_map="auto"; without a GPU on the CPU in float32, whatever --dtype says."""

from __future__ import annotations

import json

import pytest

from tests.stages.conftest import DATA, stage


def test_without_a_gpu_evaluate_stays_on_the_cpu_in_float32(tiny, tmp_path):
    out = stage("evaluate", "--model", str(tiny), "--data", str(DATA), "--seq-len", "64", "--dtype", "bf16",
                "--exact-match-rows", "1", "--report", str(tmp_path / "eval.json"))
    assert "model: evaluating in float32 on ['cpu']" in out.stdout
    assert json.loads((tmp_path / "eval.json").read_text())["tuned"]["loss"] > 0


@pytest.mark.parametrize("dtype,expected", [("bf16", "bfloat16"), ("fp32", "float32")])
def test_on_a_gpu_node_the_training_dtype_and_device_map_auto(monkeypatch, dtype, expected):
    """torch.cuda.is_available is replaced: this machine has no GPU (the stand-in only answers "is there one")."""
    import torch

    from stages import evaluate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    chosen, where = evaluate.placement(dtype)
    assert str(chosen) == f"torch.{expected}" and where == {"device_map": "auto"}
