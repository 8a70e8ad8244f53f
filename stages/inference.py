"""inference: base vs fine-tuned generations for the configured prompts into a JSON report (local copies only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stages.common import StageError, dtype_kwargs, entry, log, require_model_dir, write_json
from stages.data import DEFAULT_SYSTEM_PROMPT, dolly_messages, dolly_prompt


def generate(model_dir: Path, prompts: list[str], args: argparse.Namespace) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **dtype_kwargs(torch.float32)).eval()
    outputs = []
    for prompt in prompts:
        if tokenizer.chat_template:  # as the model was trained (stages/data.py): system + user, then its turn
            row = {"instruction": prompt, "response": ""}
            messages = dolly_messages(row, args.system_prompt or DEFAULT_SYSTEM_PROMPT)[:-1]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = dolly_prompt(prompt)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        sample: dict[str, Any] = {"do_sample": args.temperature > 0}
        if args.temperature > 0:
            sample.update(temperature=args.temperature, top_p=args.top_p)
        with torch.no_grad():
            out = model.generate(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                                 max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sample)
        outputs.append(tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return outputs


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages inference")
    p.add_argument("--base", required=True, type=Path)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--prompts", required=True, type=Path, help="JSON list of prompts")
    p.add_argument("--system-prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--report", required=True, type=Path)
    args = p.parse_args(argv)
    prompts = json.loads(args.prompts.read_text(encoding="utf-8"))
    if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts) or not prompts:
        raise StageError(f"{args.prompts}: must be a non-empty JSON list of strings")
    base, tuned = generate(args.base, prompts, args), generate(args.model, prompts, args)
    rows = [{"prompt": q, "base": b, "tuned": t} for q, b, t in zip(prompts, base, tuned)]
    for row in rows:
        log(f"Q: {row['prompt']}\n  base:  {row['base']}\n  tuned: {row['tuned']}")
    write_json(args.report, {"system_prompt": args.system_prompt, "generations": rows})
    return 0
