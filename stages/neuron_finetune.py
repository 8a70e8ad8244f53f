"""Trainium finetune with optimum-neuron (NeuronSFTTrainer + LoRA), used by the compile and finetune stages.

The same program serves neuron_parallel_compile (NEURON_EXTRACT_GRAPHS_ONLY=1, a few steps, scratch output)
and training (=0). Training itself needs Trainium. What is checked here without it: the argument plumbing, the
data split and prompt, and (tests/stages/test_optimum_neuron.py) every call below into optimum.neuron against
the real optimum-neuron 0.4.5 source. The gen2 calls follow Gen 2 upstream, awslabs/awsome-distributed-training
bce7ca54 (PR #1005) 3.test_cases/pytorch/optimum-neuron/llama3/src/train.py; gen1 keeps the optimum-neuron
0.1.0 calls of that repo's PR #643 (rendered and argument-checked only).

A requeued or retried finetune restarts from step 0 into a fresh output directory: 0.4.5's NeuronTrainer raises
"`resume_from_checkpoint` is not supported by the NeuronTrainer." (optimum/neuron/trainers/transformers.py,
NeuronTrainer._train), so this program never asks for a resume, and moves a previous attempt's checkpoints
aside so that consolidate can only ever read this attempt's.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from stages import data as datalib
from stages.common import StageError, dtype_kwargs, entry, log

MODES = {"0": "train", "1": "compile"}

# Where the NxD `done` marker of a completed adapter save lies inside checkpoint-<N>/ (stages.common
# newest_checkpoint's marker). 0.4.5: NeuronPeftModel.save_pretrained calls
# neuronx_distributed.trainer.save_checkpoint(<ckpt>/adapter_default, tag="adapter_shards", ...)
# (optimum/neuron/peft/peft_model.py, ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME), and NxD writes `done` into the tag
# folder once every rank has saved (neuronx_distributed/trainer/checkpoint.py CheckpointIOState.end, v2.28.0).
# 0.1.0 saved the tag folder directly under the checkpoint.
DONE_MARKERS = {"gen2": "adapter_default/adapter_shards/done", "gen1": "adapter_shards/done"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages neuron-finetune")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--dataset", required=True, type=Path, help="Dolly rows as JSONL (what fetch-data writes)")
    p.add_argument("--chat-data", type=Path,
                   help="write every row as chat messages here (same order) for the evaluate stage's split")
    p.add_argument("--eval-fraction", type=float, default=0.01, help="rows held out for the evaluate stage")
    p.add_argument("--seed", type=int, default=42)
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
    p.add_argument("--system-prompt", default=datalib.DEFAULT_SYSTEM_PROMPT)
    p.add_argument("--sdk", choices=["gen1", "gen2"], default="gen2")
    # A plain flag, never `--bf16 False` (argparse type=bool parses that as True: stages.md defect 10).
    p.add_argument("--bf16", action="store_true")
    return p.parse_args(argv)


def mode() -> str:
    """The compile/train switch must be explicit: an unset or odd value never falls through to training."""
    value = os.environ.get("NEURON_EXTRACT_GRAPHS_ONLY")
    if value not in MODES:
        raise StageError(f"NEURON_EXTRACT_GRAPHS_ONLY is {value!r}; set it to 1 (compile) or 0 (train)")
    return MODES[value]


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = datalib.read_jsonl(path)
    datalib.validate(path, rows, "dolly")
    return [{k: v for k, v in row.items() if k != "_line"} for row in rows]


def split_rows(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> list[dict[str, Any]]:
    """The training rows: stages.data.split, the same split the evaluate stage makes of --chat-data (same rows,
    same order, same fraction and seed), so the held-out rows are never trained on."""
    train, _ = datalib.split(rows, eval_fraction, seed)
    if not train:
        raise StageError(f"no training rows left after holding out {eval_fraction:.0%} for evaluation")
    return train


def chat_text(tokenizer: Any, row: dict[str, Any], system_prompt: str) -> str:
    """Gen 2 upstream's format_dolly: system / user (context appended) / assistant, the tokenizer's template."""
    return str(tokenizer.apply_chat_template(datalib.dolly_messages(row, system_prompt), tokenize=False))


def write_chat_data(path: Path, rows: list[dict[str, Any]], system_prompt: str) -> None:
    from stages.fetch_data import write_rows

    if rank() == 0:
        write_rows([{"messages": datalib.dolly_messages(row, system_prompt)} for row in rows], path)


def fresh_output_dir(output_dir: Path) -> Path | None:
    """Move a previous attempt's checkpoints aside (rank 0, before anything is written: the first save is
    save_steps away). The restart trains from step 0, and NxD's `done` markers of the old attempt must not make
    consolidate pick an old or half-overwritten checkpoint."""
    if rank() != 0 or not output_dir.is_dir() or not any(output_dir.iterdir()):
        return None
    aside = output_dir.with_name(f"{output_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    output_dir.rename(aside)
    log(f"restarting from step 0 (optimum-neuron 0.4.5 cannot resume): previous checkpoints moved to {aside}")
    return aside


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
        "seed": args.seed,
    }
    if args.sdk == "gen2":
        # trl 0.24's SFTConfig field (0.1.0 had max_seq_length: optimum-neuron#761).
        kwargs["max_length"] = args.max_seq_length
        # Adapter shards as plain torch.save files (NxD save_checkpoint's own default) instead of 0.4.5's xser
        # default: a LoRA adapter is small, and this is the layout tests/stages/test_optimum_neuron.py runs the
        # real 0.4.5 consolidation on (xser shards can only be read back with torch_xla).
        kwargs["use_xser"] = False
    else:
        kwargs["max_seq_length"] = args.max_seq_length
        kwargs["dataset_text_field"] = "text"  # trl 0.11 calls a formatting_func batched: pre-format instead
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
        raise StageError(f"LoRA does not look applied: {trainable:,} of {total:,} parameters are trainable")


def load_model(args: argparse.Namespace, config: Any) -> Any:  # pragma: no cover - needs Trainium
    """In the training dtype straight away, as upstream does (fp32 then cast would double host memory)."""
    import torch

    dtype = dtype_kwargs(torch.bfloat16 if args.bf16 else torch.float32)
    if args.sdk == "gen2":
        from optimum.neuron.models.training import NeuronModelForCausalLM

        return NeuronModelForCausalLM.from_pretrained(str(args.model), config.trn_config, **dtype,
                                                      attn_implementation="flash_attention_2")
    from optimum.neuron.distributed import lazy_load_for_parallelism
    from transformers import AutoModelForCausalLM

    with lazy_load_for_parallelism(tensor_parallel_size=args.tensor_parallel_size):  # Gen 1 upstream train.py
        return AutoModelForCausalLM.from_pretrained(str(args.model), low_cpu_mem_usage=True, **dtype)


def make_trainer(args: argparse.Namespace, model: Any, config: Any, tokenizer: Any,
                 train: Any) -> Any:  # pragma: no cover - needs Trainium
    from optimum.neuron import NeuronSFTTrainer
    from peft import LoraConfig

    def formatting_func(row: dict[str, Any]) -> str:
        return chat_text(tokenizer, row, args.system_prompt)

    lora = LoraConfig(**lora_kwargs(args))
    if args.sdk == "gen2":  # 0.4.5 takes processing_class= and has no **kwargs (trainers/sft_trainer.py)
        return NeuronSFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                                peft_config=lora, formatting_func=formatting_func)
    train = train.map(lambda row: {"text": formatting_func(row)})
    return NeuronSFTTrainer(model=model, args=config, train_dataset=train, tokenizer=tokenizer,  # 0.1.0 / trl 0.11
                            peft_config=lora)


def run(args: argparse.Namespace) -> int:  # pragma: no cover - needs Trainium and optimum-neuron
    run_mode = mode()
    if run_mode == "train":
        fresh_output_dir(args.output_dir)  # first: no rank writes there before the first save
    try:
        from datasets import Dataset
        from optimum.neuron import NeuronSFTConfig
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise StageError(f"the Neuron training stack (optimum-neuron) is not installed here: no module {exc.name!r}",
                         "the create_env stage installs it into the pipeline's venv") from None
    if not (args.model / "config.json").exists():
        raise StageError(f"{args.model} has no config.json", "did the download stage finish?")
    rows = read_rows(args.dataset)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.eos_token  # as upstream; Llama 3 has no pad token
    if not getattr(tokenizer, "chat_template", None):
        raise StageError(f"{args.model}: the tokenizer has no chat template", "use an Instruct model")
    if args.chat_data is not None:
        write_chat_data(args.chat_data, rows, args.system_prompt)
    train = Dataset.from_list(split_rows(rows, args.eval_fraction, args.seed))
    log(f"{len(train)} training rows of {len(rows)}; sample:\n" + chat_text(tokenizer, train[0], args.system_prompt))
    config = NeuronSFTConfig(**training_kwargs(args, run_mode))
    trainer = make_trainer(args, load_model(args, config), config, tokenizer, train)
    params = list(trainer.model.parameters())
    check_trainable(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
    trainer.train()  # never resume_from_checkpoint=: see the module docstring
    if run_mode == "train":
        trainer.save_model(str(args.final_dir))
    return 0


@entry
def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))


if __name__ == "__main__":
    import sys

    sys.exit(main())
