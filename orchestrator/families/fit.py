"""Memory accessors (orchestrator/memfit.py) for the families whose Family has no `memory=` of its own:
torchtune (GPUs) and neuron / nxd (Trainium NeuronCores). Each turns a stage's settings and params into one
device's workload; a family may move its accessor into its own Family(memory=...) at any time.

Settings are read with getattr and defaults, so a family's new or renamed settings never break validation here:
the estimate then uses the default (and says so in the message's figures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator import memfit
from orchestrator.families.base import FitContext

TUNE_HINT = ("shard it over more GPUs (nodes, nproc_per_node), keep fsdp_cpu_offload and activation_checkpointing "
             "on, use LoRA, or lower batch_size / max_seq_len")
NEURON_HINT = "raise tensor_parallel_size, or lower the batch size / sequence length"


def _tune_arch(settings: Any) -> memfit.Arch | None:
    size = str(getattr(settings, "model", "")).rsplit("_", 1)[-1]  # llama3_1_70b -> 70b
    return memfit.KNOWN_SIZES.get(size) or memfit.arch_of(str(getattr(settings, "model_id", "")))


def torchtune(ctx: FitContext) -> memfit.Workload | None:
    """finetune: the *_distributed recipes shard with FSDP2 over nodes x nproc_per_node (one process: the
    single-device recipe, unsharded). evaluate, quantize and generate (single-device recipes) are checked by the
    torchtune family itself (torchtune.py _check_fits, its gpu_memory_gib setting)."""
    s = ctx.settings
    arch = _tune_arch(s)
    if ctx.stage.kind != "finetune" or arch is None or ctx.accelerator.kind != "gpu" or ctx.resources.gpus_per_node == 0:
        return None
    dtype = str(getattr(s, "dtype", "bf16"))
    lora = getattr(s, "lora", None)
    targets = list(getattr(lora, "attn_modules", ["q_proj", "v_proj"]))
    if getattr(lora, "apply_to_mlp", False):
        targets += ["gate_proj", "up_proj", "down_proj"]
    work = memfit.Workload(ctx.stage.name, arch, dtype, getattr(ctx.params, "method", "lora"),
                           cpu_offload=bool(getattr(s, "fsdp_cpu_offload", False)),
                           lora_rank=int(getattr(lora, "rank", 8)), lora_targets=targets,
                           batch=int(getattr(s, "batch_size", 1)), seq=int(getattr(s, "max_seq_len", 2048)),
                           checkpointing=bool(getattr(s, "activation_checkpointing", False)), hint=TUNE_HINT)
    world = (ctx.resources.nodes or 1) * int(getattr(s, "nproc_per_node", 1))
    return memfit.with_device_count(work, world, "fsdp")


def _neuron_like(ctx: FitContext, tp: int, batch: int, seq: int, targets: list[str], rank: int) -> memfit.Workload | None:
    arch = memfit.arch_of(str(getattr(ctx.settings, "model_id", "")))
    if arch is None or ctx.accelerator.kind != "neuron":
        return None
    # LoRA in bf16 on the NeuronCores, tensor-parallel over tp cores; both upstream workflows checkpoint
    # activations (optimum-neuron's gradient_checkpointing, NxD's activation checkpointing).
    work = memfit.Workload(ctx.stage.name, arch, "bf16", "lora", lora_rank=rank, lora_targets=targets, batch=batch,
                           seq=seq, checkpointing=True, hint=NEURON_HINT)
    return memfit.with_device_count(work, tp, "tp")


def neuron(ctx: FitContext) -> memfit.Workload | None:
    if ctx.stage.kind not in ("compile", "finetune"):
        return None
    s = ctx.settings
    lora = getattr(s, "lora", None)
    return _neuron_like(ctx, int(getattr(s, "tp", 8)), int(getattr(s, "per_device_train_batch_size", 1)),
                        int(getattr(s, "max_seq_length", 2048)),
                        list(getattr(lora, "target_modules", ["q_proj", "v_proj"])), int(getattr(lora, "r", 16)))


def nxd(ctx: FitContext) -> memfit.Workload | None:
    if ctx.stage.kind != "finetune":
        return None
    s = ctx.settings
    lora = getattr(s, "lora", None)
    targets = getattr(lora, "target_modules", None) or ["q_proj", "k_proj", "v_proj"]
    return _neuron_like(ctx, int(getattr(s, "tensor_parallel_size", 32)), int(getattr(s, "micro_batch_size", 1)),
                        int(getattr(s, "seq_len", 4096)), list(targets), int(getattr(lora, "r", 16)))


ACCESSORS: dict[str, Callable[[FitContext], memfit.Workload | None]] = {
    "torchtune": torchtune, "neuron": neuron, "nxd": nxd,
}
