"""merge: base model + PEFT adapter -> one model in safetensors shards, tokenizer included, in the training
dtype; a probe batch checks that merged logits equal base+adapter and that the adapter changes anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from stages.common import StageError, dtype_kwargs, entry, log, require_model_dir, write_manifest

PROBE = "### Instruction:\nWhat is the capital of France?\n\n### Answer:\n"


@entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages merge")
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--adapter", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--max-shard-size", default="5GB")
    args = parser.parse_args(argv)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_model_dir(args.base)
    if not (args.adapter / "adapter_config.json").is_file():
        raise StageError(f"{args.adapter}: no adapter_config.json", "did the consolidate stage finish?")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    probe = tokenizer(PROBE, return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(args.base, **dtype_kwargs(dtype)).eval()
    with torch.no_grad():
        base_logits = base(**probe).logits.float()
    peft_model = PeftModel.from_pretrained(base, args.adapter).eval()
    with torch.no_grad():
        adapted = peft_model(**probe).logits.float()
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        merged_logits = merged(**probe).logits.float()
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
    diff = (merged_logits - adapted).abs().max().item()
    effect = (adapted - base_logits).abs().max().item()
    log(f"probe: |merged - base+adapter| = {diff:.2e} (tolerance {tol:.0e}); adapter effect {effect:.2e}")
    if diff > tol:
        raise StageError(f"merged logits differ from base+adapter by {diff:.3e} (> {tol:.0e})")
    if effect < 1e-6:
        raise StageError("the adapter does not change the model's output: it is a no-op (LoRA not trained?)")
    args.output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(args.output, safe_serialization=True, max_shard_size=args.max_shard_size)
    tokenizer.save_pretrained(args.output)
    write_manifest(args.output)
    log(f"merged model ({args.dtype}) -> {args.output}")
    return 0
