"""evaluate: held-out loss, perplexity and exact match of a model (optionally vs a base), with a verdict:
exit 3 when the tuned model's loss is not below base * --max-loss-ratio (stages.md defect 16)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from stages import data as datalib
from stages.common import StageError, entry, log, require_model_dir, write_json

WORSE_RC = 3


def measure(model_dir: Path, args: argparse.Namespace, adapter: Path | None = None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    _, held_out = datalib.load(args.data, args.format, tokenizer, args.eval_fraction, args.seed)
    if not held_out:
        raise StageError(f"{args.data}: no held-out rows to evaluate on", "raise --eval-fraction")
    total_loss, total_tokens, exact = 0.0, 0, 0
    with torch.no_grad():
        for example in held_out:
            prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(example.text, add_special_tokens=False)["input_ids"][: args.seq_len]
            labels = [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids):]
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            n = sum(1 for x in labels[1:] if x != -100)
            if n:
                total_loss += float(out.loss) * n
                total_tokens += n
        for example in held_out[: args.exact_match_rows]:
            prompt = tokenizer(example.prompt, return_tensors="pt", add_special_tokens=False)
            gen = model.generate(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"], max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            answer = tokenizer.decode(gen[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
            expected = example.answer.replace(tokenizer.eos_token or "", "")
            exact += int(answer.strip() == expected.strip())
    loss = total_loss / max(1, total_tokens)
    return {"model": str(model_dir), "eval_rows": len(held_out), "answer_tokens": total_tokens, "loss": loss,
            "perplexity": math.exp(min(loss, 50)), "exact_match": exact / max(1, min(len(held_out), args.exact_match_rows))}


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages evaluate")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--adapter", type=Path, help="evaluate base --model with this PEFT adapter")
    p.add_argument("--compare-to", type=Path, help="base model to compare against")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--format", choices=["dolly", "chat"], default="dolly")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--exact-match-rows", type=int, default=8)
    p.add_argument("--max-loss-ratio", type=float, default=1.0)
    p.add_argument("--report", required=True, type=Path)
    args = p.parse_args(argv)
    report: dict[str, Any] = {"tuned": measure(args.model, args, args.adapter)}
    log(f"tuned: loss {report['tuned']['loss']:.4f} exact match {report['tuned']['exact_match']:.0%}")
    verdict = 0
    if args.compare_to is not None:
        report["base"] = measure(args.compare_to, args)
        ratio = report["tuned"]["loss"] / report["base"]["loss"]
        report.update(loss_ratio=ratio, max_loss_ratio=args.max_loss_ratio, passed=ratio < args.max_loss_ratio)
        log(f"base: loss {report['base']['loss']:.4f}; tuned/base = {ratio:.3f} (must be < {args.max_loss_ratio})")
        verdict = 0 if report["passed"] else WORSE_RC
    write_json(args.report, report)
    if verdict:
        print(f"error: fine-tuned loss is not below {args.max_loss_ratio} x base loss", flush=True)
    return verdict
