"""finetune (Hugging Face family): LoRA / QLoRA / full fine-tuning with transformers + peft, one process per
device under torchrun: DDP, or FSDP2 with --fsdp (stages/sharding.py); gloo on CPU, nccl on GPU.

Checkpoints go to <output>/checkpoint-<step>/ with a `done` marker written last; a restarted (requeued) job
resumes from the newest complete one and continues the step count. SIGTERM/SIGUSR2 (Slurm's warning before a
time limit or preemption) save a checkpoint at the next step boundary and exit 75.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages import data as datalib
from stages import sharding, tracking
from stages.answer_head import answer_loss
from stages.batches import collate, micro_batches
from stages.common import StageError, dtype_kwargs, entry, log, metric, progress, require_model_dir
from stages.finetune_checkpoint import resume, save_checkpoint, save_final
from stages.torchrun import Dist

INTERRUPTED_RC = 75
_stop_requested = False


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stages finetune")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--format", choices=["dolly", "chat"], default="dolly")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default="q_proj,v_proj")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--profile-step", type=int, default=0,
                   help="profile this optimizer step with torch.profiler into <output>/profile-step-<N>.txt")
    p.add_argument("--fsdp", action="store_true",
                   help="shard parameters, gradients and optimizer state (FSDP2; FSDP1 for QLoRA)")
    p.add_argument("--cpu-offload", action="store_true", help="with --fsdp: keep the sharded parameters in host RAM")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    return p.parse_args(argv)


def _on_signal(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True
    log(f"signal {signum}: saving a checkpoint at the next step boundary")


def load_model(args: argparse.Namespace, dist: Dist) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    kwargs: dict[str, Any] = dtype_kwargs(dtype)
    if args.method == "qlora":
        # PIPELINE_QLORA_ON_CPU=1: tests only. bitsandbytes >= 0.48 has a CPU 4-bit backend, which lets the test
        # suite run this real QLoRA path (FSDP1 included) on CPU ranks; nobody trains a real model that way.
        if not dist.cuda and os.environ.get("PIPELINE_QLORA_ON_CPU") != "1":
            raise StageError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit); this node has none",
                             "use method: lora on CPU, or run this stage on a GPU partition")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise StageError("QLoRA needs bitsandbytes", "pip install bitsandbytes in the stage's env") from None
        kwargs["quantization_config"] = sharding.qlora_config(dtype, sharded=args.fsdp)
        if args.fsdp:  # read by from_pretrained: on GPUs only local rank 0 keeps the weights
            os.environ.update(sharding.rank0_loading_env(dist.cuda))
    # Any: a transformers model, or the PeftModel wrapping it below.
    model: Any = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if args.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        if args.method == "qlora" and not args.fsdp:  # sharded: it would upcast norms to fp32, mixing dtypes
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        targets = [t for t in args.target_modules.split(",") if t]
        try:
            model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, task_type="CAUSAL_LM",
                                                     lora_dropout=args.lora_dropout, target_modules=targets))
        except ValueError as exc:
            raise StageError(f"LoRA could not be applied: {exc}",
                             "check --target-modules against the model's module names") from None
    if args.gradient_checkpointing:  # non-reentrant: fine with frozen inputs (LoRA) and with FSDP (torch docs)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    check_trainable(model, args.method)
    # FSDP moves each rank's shard to the device itself: the whole model never has to fit on one GPU.
    return model.to(dist.device) if args.method != "qlora" and not args.fsdp else model, tokenizer


def check_trainable(model: Any, method: str) -> tuple[int, int]:
    """Log trainable vs total; LoRA that trains everything (or nothing) is an error (optimum-neuron#821)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    base_trainable = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    if method != "full" and (trainable == 0 or base_trainable):
        raise StageError(f"LoRA was not applied: {trainable:,} of {total:,} parameters are trainable"
                         + (f", including base weights such as {base_trainable[0]}" if base_trainable else ""),
                         "check --target-modules against the model's module names")
    return trainable, total


def start_profile(wanted: bool) -> Any:
    """torch.profiler around one optimizer step (bench/finetune.py --profile reads what it writes)."""
    if not wanted:
        return None
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    profiler.__enter__()
    return profiler


def stop_profile(profiler: Any, target: Path) -> None:
    if profiler is None:
        return
    profiler.__exit__(None, None, None)
    averages = profiler.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=25)
    shapes = profiler.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15)
    target.write_text(f"{table}\n\nby input shape:\n{shapes}\n", encoding="utf-8")
    log(f"profile of one step -> {target}")


@dataclass
class Run:
    """What the training loop works on, built once by setup()."""

    dist: Dist
    model: Any
    tokenizer: Any
    head: Any  # the LM head module answer_loss hooks; DDP/FSDP keep this object when they wrap the model
    chunks: list[datalib.Chunk]
    steps: int
    params: list[Any]
    optimizer: Any
    scheduler: Any
    step: int


def setup(args: argparse.Namespace) -> Run:
    """Validate the data, load and wrap the model, build optimizer and schedule, resume from a checkpoint."""
    import torch

    datalib.validate(args.data, datalib.read_jsonl(args.data), args.format)  # bad rows fail before any loading
    dist = Dist()
    if args.fsdp and dist.world == 1:
        log("--fsdp with a single process: nothing to shard, training unsharded")
        args.fsdp = False
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args, dist)
    head = model.get_output_embeddings()  # before DDP/FSDP wrap it; they keep this module object
    train_set, _ = datalib.load(args.data, args.format, tokenizer, args.eval_fraction, args.seed)
    chunks = (datalib.pack if args.packing else datalib.pad)(train_set, tokenizer, args.seq_len)
    if not chunks:
        raise StageError(f"{args.data}: no training sequence has an answer token within {args.seq_len} tokens",
                         "raise --seq-len (seq_len), or shorten the prompts")
    per_step = args.batch_size * dist.world * args.grad_accum
    steps = args.max_steps if args.max_steps > 0 else args.epochs * math.ceil(len(chunks) / per_step)
    log(f"{len(train_set)} examples -> {len(chunks)} sequences of <= {args.seq_len} tokens; {steps} steps "
        f"of {per_step} sequences ({dist.world} process(es))")
    if args.fsdp:
        model = sharding.shard(model, qlora=args.method == "qlora", device=dist.device, cpu_offload=args.cpu_offload)
    elif dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.cuda else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = min(args.warmup_steps, max(1, steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / max(1, steps - warmup)))
    step = resume(args.output, model, optimizer, scheduler, args)
    return Run(dist, model, tokenizer, head, chunks, steps, params, optimizer, scheduler, step)


def one_step(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """One optimizer step over grad_accum micro-batches; what it measured, for report()."""
    import torch

    dist = run.dist
    started, tokens, labelled, loss_sum = time.perf_counter(), 0, 0, torch.zeros((), device=dist.device)
    for indices in micro_batches(len(run.chunks), args.batch_size, dist.world, dist.rank, args.seed,
                                 run.step * args.grad_accum, args.grad_accum):
        micro = [run.chunks[i] for i in indices]
        batch = collate(micro, run.tokenizer.pad_token_id, dist.device)
        loss = answer_loss(run.model, run.head, batch) / args.grad_accum
        loss.backward()
        loss_sum += loss.detach()  # read once per step, not once per micro-batch (a GPU sync each)
        tokens += sum(len(ids) for ids, _ in micro)
        labelled += sum(label != -100 for _, labels in micro for label in labels[1:])
    grad_norm = sharding.clip_grad_norm(run.model, run.params, 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return {"started": started, "tokens": tokens, "labelled": labelled, "loss_sum": loss_sum, "grad_norm": grad_norm}


def report(run: Run, measured: dict[str, Any], metrics: Any, next_progress: float) -> float:
    """metrics.jsonl and the metric line (rank 0), the log, progress; returns when progress may be written next."""
    step, steps, dist = run.step, run.steps, run.dist
    loss_mean = dist.mean(float(measured["loss_sum"]))
    rate = dist.world * measured["tokens"] / (time.perf_counter() - measured["started"])
    if metrics is not None:  # labelled_tokens: rank 0's, what bench/finetune.py counts the LM head's FLOPs on
        metrics.write(json.dumps({"step": step, "loss": round(loss_mean, 5), "lr": run.scheduler.get_last_lr()[0],
                                  "tokens_per_s": round(rate, 1), "tokens": measured["tokens"],
                                  "labelled_tokens": measured["labelled"], "time": round(time.time(), 4),
                                  "cpu_time": round(time.process_time(), 4)}) + "\n")
        metrics.flush()
        metric(step=step, steps=steps, loss=round(loss_mean, 5), lr=run.scheduler.get_last_lr()[0],
               grad_norm=measured["grad_norm"], tokens_per_s=round(rate, 1))
    if step % 10 == 0 or step == 1:
        log(f"step {step}/{steps} loss {loss_mean:.4f} tokens/s {rate:.0f}")
    if time.monotonic() >= next_progress or step == steps:  # at most every 5 s: run dirs live on FSx
        progress(step=step, steps=steps, loss=round(loss_mean, 4), tokens_per_s=round(rate, 1))
        return time.monotonic() + 5.0
    return next_progress


def train(args: argparse.Namespace) -> int:
    run = setup(args)
    dist = run.dist
    tracking.params(vars(args))
    metrics = open(args.output / "metrics.jsonl", "a") if dist.rank == 0 else None
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGUSR2, _on_signal)
    run.model.train()
    next_progress = 0.0
    while run.step < run.steps:
        profiler = start_profile(args.profile_step == run.step + 1 and dist.rank == 0)
        measured = one_step(run, args)
        stop_profile(profiler, args.output / f"profile-step-{run.step}.txt")
        next_progress = report(run, measured, metrics, next_progress)
        if run.step % args.save_steps == 0 or _stop_requested:
            save_checkpoint(args.output / f"checkpoint-{run.step}", run.model, run.optimizer, run.scheduler,
                            run.step, args, dist, run.tokenizer)
        if _stop_requested:
            return INTERRUPTED_RC
    save_final(args.output, run.model, run.tokenizer, run.step, args, dist)
    tracking.artifact(args.output / "final", "final")  # the adapter (or full model) and its train_state.json
    dist.barrier()
    return 0


@entry
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    return train(args)
