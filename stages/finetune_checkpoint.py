"""The finetune stage's checkpoints: save (<output>/checkpoint-<step>/, `done` written last), resume from the
newest complete one, and the final adapter or model (<output>/final/). With FSDP each rank writes its own shard
through stages/sharding.py; otherwise rank 0 writes the trainable parameters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages import sharding
from stages.common import StageError, log, newest_checkpoint, write_json

if TYPE_CHECKING:
    from stages.torchrun import Dist


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
