"""Benchmark: our finetune stage vs a plain Hugging Face Trainer loop, same tiny model, data, LoRA and batch.

    .venv/bin/python bench/finetune.py [--steps 80]
Both run in this one session, alternating, so the tokens/s ratio is fair on a shared machine. The stage is
measured as it runs in a job (its own metrics.jsonl, steady state after warm-up); the Trainer by wall time of
train() over the same number of optimizer steps on the same packed sequences.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "examples" / "data" / "dolly-tiny.jsonl"
TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
BATCH, SEQ = 8, 128


def ours(model: Path, out: Path, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    subprocess.run([sys.executable, "-m", "stages", "finetune", "--model", str(model), "--data", str(DATA),
                    "--output", str(out), "--max-steps", str(steps), "--save-steps", str(10 * steps),
                    "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--lr", "1e-2", "--target-modules", TARGETS],
                   check=True, capture_output=True, env=env)
    rates = [json.loads(l)["tokens_per_s"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[5:])


def trainer(model_dir: Path, out: Path, steps: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from stages import data as datalib

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train, _ = datalib.load(DATA, "dolly", tokenizer, 0.1, 42)
    chunks = datalib.pack(train, tokenizer, SEQ)
    dataset = [{"input_ids": torch.tensor(c), "labels": torch.tensor(c)} for c in chunks]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS.split(","),
                                      task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                             learning_rate=1e-2, logging_steps=10**6, save_strategy="no", report_to=[],
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    tokens = steps * BATCH * SEQ
    start = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=dataset).train()
    return tokens / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from stages import tiny

        tiny.build(DATA, work / "model")
        a, b = [], []
        for r in range(args.rounds):
            a.append(ours(work / "model", work / f"ours{r}", args.steps))
            b.append(trainer(work / "model", work / f"hf{r}", args.steps))
    report = {"ours_tokens_per_s": round(statistics.median(a)), "trainer_tokens_per_s": round(statistics.median(b)),
              "ratio": round(statistics.median(a) / statistics.median(b), 2), "steps": args.steps,
              "batch": BATCH, "seq_len": SEQ, "packing": True}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
