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
import random
import signal
import time
from pathlib import Path
from typing import Any

from stages import data as datalib
from stages import sharding, tracking
from stages.common import (StageError, dtype_kwargs, entry, log, metric, newest_checkpoint, progress,
                           require_model_dir, write_json)

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


class Dist:
    """torchrun's environment, or a single process."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{self.local_rank}" if self.cuda else "cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)  # FSDP2's default device mesh uses the current device
        if self.world > 1:
            dist.init_process_group("nccl" if self.cuda else "gloo")

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        if self.world == 1:
            return value
        tensor = torch.tensor([value], device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world


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


def micro_batches(n_items: int, batch: int, world: int, rank: int, seed: int, start: int, count: int) -> list[list[int]]:
    """Micro-batches start..start+count-1 of a deterministic epoch-shuffled stream: the same on restart."""
    per = batch * world
    out = []
    for k in range(start, start + count):
        first = k * per + rank * batch
        indices = []
        for pos in range(first, first + batch):
            epoch, offset = divmod(pos, n_items)
            order = list(range(n_items))
            random.Random(seed + epoch).shuffle(order)
            indices.append(order[offset])
        out.append(indices)
    return out


def collate(chunks: list[datalib.Chunk], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    labels = torch.full((len(chunks), width), -100, dtype=torch.long)  # padding and prompts: no loss
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for i, (chunk, chunk_labels) in enumerate(chunks):
        ids[i, :len(chunk)] = torch.tensor(chunk)
        labels[i, :len(chunk_labels)] = torch.tensor(chunk_labels)
        mask[i, :len(chunk)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def answer_targets(labels: Any) -> tuple[Any, Any]:
    """The positions whose next token carries a label, and those labels: the causal shift of transformers'
    ForCausalLMLoss (transformers 4.57 loss/loss_utils.py: labels padded with one -100, then labels[..., 1:])."""
    import torch

    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    keep = shifted != -100
    return keep, shifted[keep]


def answer_loss(model: Any, head: Any, batch: dict[str, Any]) -> Any:
    """model(**batch).loss - the mean cross-entropy over the labelled (answer) tokens - with the LM head applied
    only at the positions that have a label. transformers computes the logits of every position and drops the
    prompt's in the loss; with answer-only labels most rows of that (tokens x vocabulary) product, and of its
    backward, are thrown away. A forward pre-hook on the head module hands it the labelled rows only, so the call
    still goes through the wrapper's forward (DDP's and FSDP's hooks run as before). A model that does not call
    its head module (logits still 3-D) gets its logits indexed instead: the same loss, without the saving."""
    import torch

    keep, targets = answer_targets(batch["labels"])
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][keep], *args[1:]))
    try:  # use_cache=False: a training step never reads the KV cache the forward would otherwise fill
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    finally:
        handle.remove()
    if logits.dim() == 3:
        logits = logits[keep]
    return torch.nn.functional.cross_entropy(logits.float(), targets)  # float: as ForCausalLMLoss upcasts


def trainable_state(model: Any) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}


def save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, step: int, args: argparse.Namespace,
                    dist: Dist, tokenizer: Any) -> None:
    import torch

    dist.barrier()
    if args.fsdp:  # every rank writes its own shard; consolidate gathers them
        sharding.save(path, model, optimizer, frozen_too=args.method == "full")
    if dist.rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        inner = model.module if hasattr(model, "module") else model
        extra = {"scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
        if not args.fsdp:
            torch.save(trainable_state(inner), path / "trainable.pt")
            extra["optimizer"] = optimizer.state_dict()
        torch.save(extra, path / "optimizer.pt")
        if args.method != "full" and args.fsdp:
            inner.peft_config["default"].save_pretrained(path / sharding.DCP_DIR)  # adapter_config.json
        elif args.method != "full":
            inner.save_pretrained(path / "adapter")  # PEFT layout: consolidate takes it from here
        write_json(path / "train_state.json", {"step": step, "method": args.method, "fsdp": args.fsdp,
                                               "world_size": dist.world})
        (path / "done").write_text(str(step))  # last: a checkpoint without it is incomplete
        log(f"checkpoint {path.name} saved")
    dist.barrier()


def resume(output: Path, model: Any, optimizer: Any, scheduler: Any, args: argparse.Namespace) -> int:
    import torch

    ckpt = newest_checkpoint(output)
    if ckpt is None:
        return 0
    if args.fsdp:
        sharding.load(ckpt, model, optimizer, frozen_too=args.method == "full")
    else:
        if not (ckpt / "trainable.pt").is_file():
            raise StageError(f"{ckpt} was written by an FSDP run (no trainable.pt)",
                             "resume with fsdp: true, or move the checkpoint aside to start over")
        state = torch.load(ckpt / "trainable.pt", map_location="cpu")
        inner = model.module if hasattr(model, "module") else model
        params = dict(inner.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device))
    extra = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=False)
    if not args.fsdp:
        optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    step = int(json.loads((ckpt / "train_state.json").read_text())["step"])
    log(f"resuming from {ckpt.name} at step {step}")
    return step


def save_final(output: Path, model: Any, tokenizer: Any, step: int, args: argparse.Namespace, dist: Dist) -> None:
    import torch

    # With FSDP the full state is gathered first (a collective: every rank takes part), then rank 0 writes it.
    state = sharding.full_state(model, frozen_too=args.method == "full") if args.fsdp else None
    if dist.rank != 0:
        return
    final = output / "final"
    sharding.save_pretrained(final, model, state)
    tokenizer.save_pretrained(final)
    # Rank 0's peak GPU memory (torch's allocator), read by bench/gpu_finetune.py; None on CPU.
    peak = torch.cuda.max_memory_allocated(dist.device) if dist.cuda else None
    write_json(final / "train_state.json", {"step": step, "method": args.method, "source_model": str(args.model),
                                            "peak_device_memory_bytes": peak})
    log(f"final {'adapter' if args.method != 'full' else 'model'} at step {step} -> {final}")


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


def train(args: argparse.Namespace) -> int:
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
    tracking.params(vars(args))
    metrics = open(args.output / "metrics.jsonl", "a") if dist.rank == 0 else None
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGUSR2, _on_signal)
    model.train()
    next_progress = 0.0
    while step < steps:
        profiler = start_profile(args.profile_step == step + 1 and dist.rank == 0)
        started, tokens, labelled, loss_sum = time.perf_counter(), 0, 0, torch.zeros((), device=dist.device)
        for indices in micro_batches(len(chunks), args.batch_size, dist.world, dist.rank, args.seed,
                                     step * args.grad_accum, args.grad_accum):
            micro = [chunks[i] for i in indices]
            batch = collate(micro, tokenizer.pad_token_id, dist.device)
            loss = answer_loss(model, head, batch) / args.grad_accum
            loss.backward()
            loss_sum += loss.detach()  # read once per step, not once per micro-batch (a GPU sync each)
            tokens += sum(len(ids) for ids, _ in micro)
            labelled += sum(label != -100 for _, labels in micro for label in labels[1:])
        grad_norm = sharding.clip_grad_norm(model, params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        stop_profile(profiler, args.output / f"profile-step-{step}.txt")
        loss_mean = dist.mean(float(loss_sum))
        rate = dist.world * tokens / (time.perf_counter() - started)
        if metrics is not None:  # labelled_tokens: rank 0's, what bench/finetune.py counts the LM head's FLOPs on
            metrics.write(json.dumps({"step": step, "loss": round(loss_mean, 5), "lr": scheduler.get_last_lr()[0],
                                      "tokens_per_s": round(rate, 1), "tokens": tokens,
                                      "labelled_tokens": labelled, "time": round(time.time(), 4),
                                      "cpu_time": round(time.process_time(), 4)}) + "\n")
            metrics.flush()
            metric(step=step, steps=steps, loss=round(loss_mean, 5), lr=scheduler.get_last_lr()[0],
                   grad_norm=grad_norm, tokens_per_s=round(rate, 1))
        if step % 10 == 0 or step == 1:
            log(f"step {step}/{steps} loss {loss_mean:.4f} tokens/s {rate:.0f}")
        if time.monotonic() >= next_progress or step == steps:  # at most every 5 s: run dirs live on FSx
            progress(step=step, steps=steps, loss=round(loss_mean, 4), tokens_per_s=round(rate, 1))
            next_progress = time.monotonic() + 5.0
        if step % args.save_steps == 0 or _stop_requested:
            save_checkpoint(args.output / f"checkpoint-{step}", model, optimizer, scheduler, step, args, dist, tokenizer)
        if _stop_requested:
            return INTERRUPTED_RC
    save_final(args.output, model, tokenizer, step, args, dist)
    tracking.artifact(args.output / "final", "final")  # the adapter (or full model) and its train_state.json
    dist.barrier()
    return 0


@entry
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    return train(args)
