"""bench/gpu_finetune.py, as far as a CPU allows: it refuses without CUDA, its MFU arithmetic counts the model's
real matmul weights, and the exact torchrun/finetune command line it builds runs (here on 2 CPU ranks, the
tiny model, a few steps) and its figures are read back. The GPU figures themselves have never been measured."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu_finetune.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_finetune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_refuses_clearly_without_cuda():
    out = subprocess.run([sys.executable, str(SCRIPT), "--steps", "2"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 2
    assert "needs a CUDA GPU" in out.stderr and "sees none" in out.stderr


def test_flops_per_token_counts_smollm2_matmul_weights():
    """SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M-Instruct): its matmul weights, with the tied
    embedding counted once as lm_head, are 134,479,872 of its 134,515,008 parameters (the rest: RMSNorm)."""
    bench = load_bench()
    config = {"hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152, "intermediate_size": 1536,
              "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}
    attention = 12 * 30 * 576 * 1024
    assert bench.flops_per_token(config, 1024, "full") == 6 * 134_479_872 + attention
    assert bench.flops_per_token(config, 1024, "lora") == 4 * 134_479_872 + attention
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert bench.peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert bench.peak_flops("NVIDIA H200") == 989.4e12 and bench.peak_flops("Some GPU") is None
    assert bench.mfu(1e5, 1e9, 2, 1e15) == pytest.approx(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lora-bf16-fsdp", "qlora-fsdp"])
def test_the_command_it_runs_runs(tiny, tmp_path, monkeypatch, name):
    bench = load_bench()
    if name.startswith("qlora"):
        pytest.importorskip("bitsandbytes")
        monkeypatch.setenv("PIPELINE_QLORA_ON_CPU", "1")  # bitsandbytes' CPU backend stands in for CUDA
    monkeypatch.setattr(bench, "DATA", REPO / "examples" / "data" / "dolly-tiny.jsonl")
    args = argparse.Namespace(steps=3, warmup=1, batch_size=2, seq_len=64)
    result = bench.bench(bench.CONFIGS[name], tiny, tmp_path / "out", 2, args)
    assert result["tokens_per_s"] > 0 and result["peak_gib"] == 0  # no CUDA allocator on CPU
    assert os.path.isfile(tmp_path / "out" / "final" / "adapter_model.safetensors")
