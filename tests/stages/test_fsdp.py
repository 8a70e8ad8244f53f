"""FSDP for real, on two CPU processes over gloo: FSDP2 (fully_shard) for LoRA and FSDP1 for QLoRA (real
bitsandbytes 4-bit layers, whose CPU backend exists from bitsandbytes 0.48); each trains what DDP trains, its
sharded checkpoints resume to the same weights, and consolidate gathers the shards into the adapter final/ holds.
Not covered here (no GPU): NCCL, and the GPU-only rank-0 loading + sync_module_states broadcast of sharded QLoRA."""

from __future__ import annotations

import json
import math
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


def torchrun(model: Path, output: Path, *extra: str, env_extra: dict[str, str] | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
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


def like_ddp_consolidates_and_resumes(model: Path, tmp_path: Path, *extra: str,
                                     env_extra: dict[str, str] | None = None) -> str:
    """Train the same run with DDP and with --fsdp on 2 ranks, then check the FSDP run against DDP, consolidate
    its sharded checkpoint and resume from it; returns the FSDP run's output."""
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(model, ddp, *extra, env_extra=env_extra)
    out = torchrun(model, fsdp, *extra, "--fsdp", env_extra=env_extra)
    shards = sorted(p.name for p in (fsdp / "checkpoint-3" / "dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp", "adapter_config.json"]  # one shard per rank
    # Same data order, same averaged gradients: FSDP's reduce-scatter and DDP's all-reduce agree.
    assert losses(fsdp) == pytest.approx(losses(ddp), abs=2e-3)
    assert losses(fsdp)[-1] < losses(fsdp)[0]
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
    resumed = torchrun(model, fsdp, *extra, "--fsdp", env_extra=env_extra)
    assert "resuming from checkpoint-3 at step 3" in resumed
    assert_close(fsdp / "final" / "adapter_model.safetensors",
                 tmp_path / "final-first" / "adapter_model.safetensors", 1e-5)
    return out


@pytest.mark.slow
def test_fsdp_trains_like_ddp_resumes_exactly_and_consolidates(tiny, tmp_path):
    out = like_ddp_consolidates_and_resumes(tiny, tmp_path)
    assert "FSDP: 2 decoder layers sharded" in out


def test_ddp_resume_refuses_a_sharded_checkpoint(tiny, tmp_path):
    ck = tmp_path / "ck" / "checkpoint-3"
    (ck / "dcp").mkdir(parents=True)
    (ck / "done").write_text("3")
    out = stage("finetune", "--model", str(tiny), "--output", str(tmp_path / "ck"), *ARGS,
                check=False)
    assert out.returncode == 2 and "written by an FSDP run" in out.stderr


def bitsandbytes_cpu_4bit() -> bool:
    try:
        import torch
        from bitsandbytes.functional import quantize_4bit

        quantize_4bit(torch.ones(64, 64), quant_type="nf4", quant_storage=torch.float32)
        return True
    except (ImportError, RuntimeError, NotImplementedError):  # not installed, or no CPU backend (< 0.48)
        return False


@pytest.mark.slow
@pytest.mark.skipif(not bitsandbytes_cpu_4bit(), reason="needs bitsandbytes >= 0.48 (CPU 4-bit backend)")
def test_fsdp1_qlora_on_4bit_layers_trains_like_ddp_resumes_and_consolidates(tiny, tmp_path):
    """Sharded QLoRA the accelerate/PEFT way (stages/sharding.py: FSDP1, use_orig_params=False, PEFT's
    fsdp_auto_wrap_policy, 4-bit stored as the compute dtype) on real bitsandbytes Linear4bit layers. The old
    code applied FSDP2's fully_shard to them, the combination reported broken (bitsandbytes#1945)."""
    out = like_ddp_consolidates_and_resumes(tiny, tmp_path, "--method", "qlora",
                                            env_extra={"PIPELINE_QLORA_ON_CPU": "1"})
    assert "FSDP1 (QLoRA, 4-bit stored as float32): 2 decoder layers sharded" in out
    assert "trainable params: 13,312 of" in out  # LoRA on q/v/up only: the 4-bit base stays frozen


def test_qlora_fsdp_refuses_mixed_frozen_dtypes():
    """FSDP1 flattens a unit's frozen weights into one tensor; a model whose frozen weights mix dtypes (what
    prepare_model_for_kbit_training's fp32 norms would give) is refused with the fix, not a torch assert."""
    import torch

    from stages import sharding
    from stages.common import StageError

    model = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.bfloat16), torch.nn.LayerNorm(4))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(StageError, match="FSDP needs one float dtype") as caught:
        sharding._uniform_dtype(model)
    assert "bnb_4bit_quant_storage" in (caught.value.hint or "")


@pytest.mark.slow
@pytest.mark.skipif(not bitsandbytes_cpu_4bit(), reason="needs bitsandbytes >= 0.48 (CPU 4-bit backend)")
def test_the_qlora_examples_flags_run_in_bf16_with_checkpointing(tiny, tmp_path):
    """examples/llama3-70b-fsdp-qlora-gpu.yaml's finetune flags (bf16, FSDP1, gradient checkpointing, and
    cpu_offload, which a CPU rank has no use for). Checkpoint recompute must see the same dtypes as the forward
    pass: it did not while PEFT cast LoRA inputs to the adapter weight's (FSDP-swapped) dtype."""
    out = torchrun(tiny, tmp_path / "o", "--method", "qlora", "--fsdp", "--cpu-offload", "--gradient-checkpointing",
                   "--dtype", "bf16", env_extra={"PIPELINE_QLORA_ON_CPU": "1"})
    assert "FSDP1 (QLoRA, 4-bit stored as bfloat16): 2 decoder layers sharded" in out
    assert "no GPU, the shards are in host memory already" in out
    assert all(math.isfinite(loss) and loss > 0 for loss in losses(tmp_path / "o"))
    assert len(tensors(tmp_path / "o" / "final" / "adapter_model.safetensors")) == 12  # q, v, up x A, B x 2 layers
