"""FSDP (torch fully_shard) for real, on two CPU processes over gloo: it trains what DDP trains, its sharded
checkpoints resume to the same weights, and consolidate gathers the shards into the adapter final/ holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.stages.conftest import DATA, stage

# Dropout off: every difference between two runs then comes from the code, not from random masks.
ARGS = ["--data", str(DATA), "--batch-size", "4", "--seq-len", "128", "--lr", "1e-2", "--lora-r", "8",
        "--lora-alpha", "16", "--lora-dropout", "0", "--target-modules", "q_proj,v_proj,up_proj",
        "--max-steps", "6", "--save-steps", "3"]


def torchrun(model: Path, output: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--nnodes=1", "--nproc_per_node=2",
                          "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", "-m", "stages", "finetune",
                          "--model", str(model), "--output", str(output), *ARGS, *extra],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def losses(output: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def tensors(path: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_close(a: Path, b: Path, atol: float) -> None:
    import torch

    left, right = tensors(a), tensors(b)
    assert sorted(left) == sorted(right) and left
    for key in left:
        assert torch.allclose(left[key], right[key], atol=atol), f"{key} differs"


@pytest.mark.slow
def test_fsdp_trains_like_ddp_resumes_exactly_and_consolidates(tiny, tmp_path):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(tiny, ddp)
    out = torchrun(tiny, fsdp, "--fsdp")
    assert "FSDP: 2 decoder layers sharded" in out
    shards = sorted(p.name for p in (fsdp / "checkpoint-3" / "dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp", "adapter_config.json"]  # one shard per rank
    # Same data order, same averaged gradients: FSDP's reduce-scatter and DDP's all-reduce agree.
    assert losses(fsdp) == pytest.approx(losses(ddp), abs=2e-3)
    assert_close(fsdp / "final" / "adapter_model.safetensors", ddp / "final" / "adapter_model.safetensors", 2e-3)

    # Consolidate the newest sharded checkpoint: exactly the adapter that final/ holds (same step).
    shutil.copytree(fsdp / "final", tmp_path / "final-first")
    shutil.rmtree(fsdp / "final")
    stage("consolidate", "--checkpoints", str(fsdp), "--output", str(tmp_path / "adapter"))
    assert_close(tmp_path / "adapter" / "adapter_model.safetensors",
                 tmp_path / "final-first" / "adapter_model.safetensors", 1e-6)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8

    # A requeued job: the last checkpoint is gone, the run resumes from checkpoint-3 (weights, optimizer and
    # scheduler restored from the shards) and ends where the uninterrupted run ended.
    shutil.rmtree(fsdp / "checkpoint-6")
    out = torchrun(tiny, fsdp, "--fsdp")
    assert "resuming from checkpoint-3 at step 3" in out
    assert_close(fsdp / "final" / "adapter_model.safetensors",
                 tmp_path / "final-first" / "adapter_model.safetensors", 1e-5)


def test_ddp_resume_refuses_a_sharded_checkpoint(tiny, tmp_path):
    ck = tmp_path / "ck" / "checkpoint-3"
    (ck / "dcp").mkdir(parents=True)
    (ck / "done").write_text("3")
    out = stage("finetune", "--model", str(tiny), "--output", str(tmp_path / "ck"), *ARGS,
                check=False)
    assert out.returncode == 2 and "written by an FSDP run" in out.stderr
