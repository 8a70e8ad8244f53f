"""Trainium finetune with optimum-neuron (NeuronSFTTrainer + LoRA), used by the compile and finetune stages.

The same program serves neuron_parallel_compile (NEURON_EXTRACT_GRAPHS_ONLY=1, a few steps, scratch output)
and training (=0). This cannot run without Trainium: the argument and config plumbing is tested here; the
optimum-neuron calls follow the 0.1.x (gen1) and 0.4.x (gen2) APIs described in shared/reference/stages.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

MODES = {"0": "train", "1": "compile"}


class NeuronStageError(Exception):
    pass


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages neuron-finetune")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--dataset", required=True)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--final-dir", required=True, type=Path)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--tensor-parallel-size", type=int, required=True)
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--per-device-train-batch-size", type=int, default=1)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--num-train-epochs", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=400)
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-target-modules", default="q_proj,v_proj")
    p.add_argument("--system-prompt", default="You are a helpful assistant.")
    p.add_argument("--sdk", choices=["gen1", "gen2"], default="gen2")
    # A plain flag, never `--bf16 False` (argparse type=bool parses that as True: stages.md defect 10).
    p.add_argument("--bf16", action="store_true")
    return p.parse_args(argv)


def mode() -> str:
    """The compile/train switch must be explicit: an unset or odd value never falls through to training."""
    value = os.environ.get("NEURON_EXTRACT_GRAPHS_ONLY")
    if value not in MODES:
        raise NeuronStageError(f"NEURON_EXTRACT_GRAPHS_ONLY is {value!r}; set it to 1 (compile) or 0 (train)")
    return MODES[value]


def format_dolly(row: dict[str, Any], eos: str) -> str:
    """Dolly prompt with real newlines (the reference's Gen 1 prompt had a literal backslash-n: defect 19)."""
    parts = [f"### Instruction:\n{row['instruction']}"]
    if row.get("context"):
        parts.append(f"### Context:\n{row['context']}")
    parts.append(f"### Answer:\n{row['response']}{eos}")
    return "\n\n".join(parts)


def newest_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-<N> that finished saving (NxD writes `done` last); never a hard-coded step."""
    best: tuple[int, Path] | None = None
    for path in output_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if not match or not ((path / "done").exists() or _complete_hf_checkpoint(path)):
            continue
        step = int(match.group(1))
        if best is None or step > best[0]:
            best = (step, path)
    return best[1] if best else None


def _complete_hf_checkpoint(path: Path) -> bool:
    return (path / "trainer_state.json").exists()


def training_kwargs(args: argparse.Namespace, run_mode: str) -> dict[str, Any]:
    """The NeuronSFTConfig arguments: identical for compile and train except steps and output (defect 7)."""
    kwargs: dict[str, Any] = {
        "output_dir": str(args.output_dir),
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "num_train_epochs": args.num_train_epochs,
        "save_steps": args.save_steps,
        "logging_steps": args.logging_steps,
        "tensor_parallel_size": args.tensor_parallel_size,
        "bf16": args.bf16,
        "packing": args.packing,
        "dataset_text_field": "text",
    }
    # NeuronSFTConfig renamed max_seq_length to max_length (optimum-neuron#761).
    kwargs["max_length" if args.sdk == "gen2" else "max_seq_length"] = args.max_seq_length
    if run_mode == "compile":
        kwargs["save_strategy"] = "no"  # trial outputs are invalid: never write checkpoints from them
    return kwargs


def lora_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout,
            "target_modules": [m for m in args.lora_target_modules.split(",") if m],
            "bias": "none", "task_type": "CAUSAL_LM"}


def check_trainable(trainable: int, total: int) -> None:
    """optimum-neuron 0.1.0 trained all 8,030,261,248 parameters with LoRA 'enabled' (optimum-neuron#821)."""
    print(f"trainable params: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.4f}%)", flush=True)
    if not 0 < trainable < total * 0.10:
        raise NeuronStageError(f"LoRA does not look applied: {trainable:,} of {total:,} parameters are trainable")


def run(args: argparse.Namespace) -> int:  # pragma: no cover - needs Trainium and optimum-neuron
    run_mode = mode()
    try:
        from datasets import load_dataset
        from optimum.neuron import NeuronSFTConfig, NeuronSFTTrainer
        from peft import LoraConfig
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise NeuronStageError(f"the Neuron training stack (optimum-neuron) is not installed here: no module {exc.name!r}; "
                               "the create_env stage installs it into the pipeline's venv") from None
    if not (args.model / "config.json").exists():
        raise NeuronStageError(f"{args.model} has no config.json; did the download stage finish?")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    data = load_dataset("json", data_files=args.dataset) if args.dataset.endswith(".jsonl") else load_dataset(args.dataset)
    train = data["train"].map(lambda row: {"text": format_dolly(row, tokenizer.eos_token)})
    print("sample:\n" + train[0]["text"], flush=True)
    config = NeuronSFTConfig(**training_kwargs(args, run_mode))
    model: Any
    if args.sdk == "gen2":
        from optimum.neuron.models.training import NeuronModelForCausalLM

        model = NeuronModelForCausalLM.from_pretrained(args.model, config.trn_config,
                                                       attn_implementation="flash_attention_2")
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model)
    trainer = NeuronSFTTrainer(model=model, args=config, train_dataset=train, tokenizer=tokenizer,
                               peft_config=LoraConfig(**lora_kwargs(args)))
    params = list(trainer.model.parameters())
    check_trainable(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
    resume = newest_checkpoint(args.output_dir) if run_mode == "train" else None
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if run_mode == "train":
        trainer.save_model(str(args.final_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return run(args)
    except NeuronStageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
