"""FSDP for the finetune stage, by the method known to work for each case:

- LoRA and full fine-tuning (fp32/bf16 weights): torch's fully_shard (FSDP2) per decoder layer.
- QLoRA (bitsandbytes 4-bit base): FSDP1, `FullyShardedDataParallel(use_orig_params=False)` with PEFT's
  `fsdp_auto_wrap_policy` (LoRA layers and frozen layers in separate flat parameters), the 4-bit weights stored in
  the compute dtype (`bnb_4bit_quant_storage`) and FSDP's mixed precision in that same dtype, and the model
  loaded on local rank 0 only (`FSDP_CPU_RAM_EFFICIENT_LOADING`) then broadcast with `sync_module_states`.
  That is exactly what transformers' Trainer + accelerate do for FSDP-QLoRA (transformers 4.57
  trainer.py `_fsdp_qlora_plugin_updates`; accelerate 1.15 accelerator.py `prepare_model`, FSDP1 branch;
  PEFT 0.21 docs/source/accelerate/fsdp.md "Use PEFT QLoRA and FSDP": `fsdp_use_orig_params: false`,
  `fsdp_cpu_ram_efficient_loading: true`, `fsdp_sync_module_states: true`; bitsandbytes 0.50
  docs/source/fsdp_qlora.md), i.e. seeds 003/004's `ACCELERATE_USE_FSDP=1 FSDP_CPU_RAM_EFFICIENT_LOADING=1`.
  FSDP2 on 4-bit layers is what is reported broken (bitsandbytes#1945, axolotl#2992: the quant state is lost,
  "FSDP expects uniform original parameter dtype"), so it is never used for QLoRA here.

Sharded checkpoints are written with torch.distributed.checkpoint (DCP: every rank writes its own shard, nobody
gathers the model to save) through `torch.distributed.checkpoint.state_dict`, which serves FSDP1 and FSDP2 alike;
one full state dict is gathered only for the final adapter/model.

Both run on CPU over gloo as well as on GPUs over nccl, so both are exercised for real by the tests with two CPU
processes (tests/stages/test_fsdp.py). Without the rank-0 loading (LoRA/full), each rank loads the base model into
host memory before sharding it: budget host RAM for one full copy per process on the node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.common import StageError, log

DCP_DIR = "dcp"  # checkpoint-<N>/dcp/: .metadata + __<rank>_0.distcp; consolidate gathers it into one file


def shard(model: Any, qlora: bool = False, device: Any = None, cpu_offload: bool = False) -> Any:
    """FSDP2 for LoRA/full; FSDP1 the accelerate way for a 4-bit (QLoRA) model. Returns the sharded model."""
    layers = _decoder_layers(model)
    if cpu_offload and (device is None or device.type == "cpu"):
        # Training on CPU ranks the shards are in host memory already; FSDP2's CPUOffloadPolicy also needs an
        # accelerator to copy them to ("Cannot access accelerator device when none is available").
        log("--cpu-offload: no GPU, the shards are in host memory already")
        cpu_offload = False
    if qlora:
        return _shard_qlora(model, device, cpu_offload, len(layers))
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    # Shard every decoder layer, then the root (embeddings, norm, head), as torchtune and the FSDP2 docs do.
    # OffloadPolicy() is fully_shard's own default (torch 2.13 fsdp/_fully_shard/_fully_shard.py): no offload.
    policy = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for layer in layers:
        fully_shard(layer, offload_policy=policy)
    fully_shard(model, offload_policy=policy)
    log(f"FSDP: {len(layers)} decoder layers sharded" + (", parameters offloaded to CPU" if cpu_offload else ""))
    return model


def _decoder_layers(model: Any) -> list[Any]:
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise StageError("--fsdp: the model has no *DecoderLayer modules to shard",
                         "FSDP here supports decoder-only transformers (Llama, Mistral, Qwen...); drop fsdp")
    return layers


def rank0_loading_env(cuda: bool) -> dict[str, str]:
    """Set before from_pretrained for sharded QLoRA on GPUs: transformers then keeps the (quantized) weights on
    local rank 0 only and leaves the other ranks' on the meta device (transformers 4.57 integrations/fsdp.py
    is_fsdp_enabled, modeling_utils.py _load_state_dict_into_meta_model); FSDP's sync_module_states broadcasts
    them. FSDP1 can broadcast only from GPU tensors (_init_utils.py _check_module_states_for_sync_module_states),
    so on CPU ranks (the tests) every rank loads and quantizes the same weights itself instead."""
    return {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"} if cuda else {}


def qlora_config(dtype: Any, sharded: bool) -> Any:
    """The 4-bit config: NF4, computing in dtype; sharded, the 4-bit data is stored in dtype too, so FSDP can
    flatten it with the model's other (dtype) weights into one flat parameter (bitsandbytes fsdp_qlora.md)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_quant_storage=dtype if sharded else torch.uint8)


def _shard_qlora(model: Any, device: Any, cpu_offload: bool, n_layers: int) -> Any:
    import torch
    from accelerate.utils.fsdp_utils import ensure_weights_retied
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import CPUOffload, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    device = device or torch.device("cpu")
    storage = _uniform_dtype(model)
    # FSDP's mixed precision (cast_forward_inputs below) gives every unit its inputs in the storage dtype. PEFT
    # would otherwise cast a LoRA layer's input to its adapter weight's dtype, which under FSDP1 is the fp32 flat
    # parameter in forward but the gathered bf16 one in a checkpoint recompute ("Recomputed values ... have
    # different metadata"); PEFT turns that cast off where hooks handle dtypes (peft 0.21 helpers.py
    # disable_input_dtype_casting), as here, for good.
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            # Not declared on BaseTunerLayer: peft 0.21 tuners_utils.py _cast_input_dtype reads it with getattr(...,
            # True), and helpers.py sets it on the instance as here.
            layer: Any = module
            layer.cast_input_dtype_enabled = False
    # Ranks other than local 0 hold meta tensors (RANK0_LOADING_ENV): materialise them empty on the device, keep
    # tied weights tied (accelerate's ensure_weights_retied), and let sync_module_states fill them from rank 0.
    init = ensure_weights_retied(lambda m: m.to_empty(device=device, recurse=False), model, device)
    wrapped = FSDP(model, auto_wrap_policy=fsdp_auto_wrap_policy(model), sharding_strategy=ShardingStrategy.FULL_SHARD,
                   use_orig_params=False, sync_module_states=device.type == "cuda", param_init_fn=init,
                   limit_all_gathers=True,
                   # Every unit casts its inputs to the storage dtype: PEFT casts a LoRA layer's input to the fp32
                   # adapter weight's dtype (outside autocast, lora/bnb.py), which FSDP then computes in bf16.
                   mixed_precision=MixedPrecision(param_dtype=storage, reduce_dtype=storage, buffer_dtype=storage,
                                                  cast_forward_inputs=True),
                   cpu_offload=CPUOffload(offload_params=cpu_offload),
                   device_id=device)  # explicit, also on CPU: FSDP1 refuses to guess a CPU device
    log(f"FSDP1 (QLoRA, 4-bit stored as {str(storage).replace('torch.', '')}): {n_layers} decoder layers sharded"
        + (", parameters offloaded to CPU" if cpu_offload else ""))
    return wrapped


def _uniform_dtype(model: Any) -> Any:
    """FSDP1 flattens a unit's parameters into one tensor: the frozen ones must share one float dtype
    ("FSDP expects uniform original parameter dtype"). LoRA weights are wrapped in their own units."""
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    if len(frozen) != 1 or not next(iter(frozen)).is_floating_point:
        raise StageError(f"QLoRA with FSDP: the frozen weights have dtypes {sorted(map(str, frozen))}, FSDP needs "
                         "one float dtype", "load the 4-bit model with bnb_4bit_quant_storage = the model dtype")
    return next(iter(frozen))


def clip_grad_norm(model: Any, params: list[Any], max_norm: float) -> float:
    """FSDP1 needs its own clip_grad_norm_ (the norm over every rank's shard); FSDP2 (DTensor), DDP and a single
    process work with torch's (torch.distributed.fsdp.FullyShardedDataParallel.clip_grad_norm_ docs).
    Returns the total norm before clipping, for the metrics history; under FSDP2 it is a DTensor, whose
    full_tensor() every rank calls here (it is a collective)."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if isinstance(model, FSDP):
        norm = model.clip_grad_norm_(max_norm)
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return round(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm), 5)


def _options(frozen_too: bool, full: bool = False, on_cpu: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # LoRA saves only the trainable tensors: the frozen base is the download stage's and never changes.
    # A full state dict of GPU shards is gathered to host memory (cpu_offload); shards that already live on the CPU
    # are not, because FSDP1's offload_to_cpu frees the CPU-resident unsharded flat parameter it gathered into
    # ("setStorage: ... out of bounds for storage of size 0", torch 2.13 on gloo).
    return StateDictOptions(ignore_frozen_params=not frozen_too, full_state_dict=full, cpu_offload=full and not on_cpu,
                            strict=False)


def save(path: Path, model: Any, optimizer: Any, frozen_too: bool) -> None:
    """Every rank writes its shard of the trainable parameters and optimizer state under path/dcp/."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(frozen_too))
    dcp_save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / DCP_DIR))


def load(path: Path, model: Any, optimizer: Any, frozen_too: bool) -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    if not (path / DCP_DIR / ".metadata").is_file():
        raise StageError(f"{path}: no {DCP_DIR}/.metadata, so it was not written by an FSDP run",
                         "resume with the same fsdp setting the checkpoint was written with")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(frozen_too))
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}  # filled in place by DCP
    dcp_load(state, checkpoint_id=str(path / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(frozen_too))


def full_state(model: Any, frozen_too: bool) -> dict[str, Any]:
    """The whole (trainable, or every) state dict as plain CPU tensors; a collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    state: dict[str, Any] = get_model_state_dict(model, options=_options(frozen_too, full=True, on_cpu=on_cpu))
    return state


def save_pretrained(directory: Path, model: Any, state: dict[str, Any] | None) -> None:
    """Rank 0 writes the final adapter (PEFT layout) or model. PEFT 0.21's save_pretrained picks the adapter's
    tensors by matching state-dict keys against module names (tuners_utils.py _get_tuner_state_dict_key_prefixes),
    and FSDP1 renames modules `_fsdp_wrapped_module.*` while its state dict keeps the plain names: it would save an
    empty adapter. For FSDP1 the adapter is written here in PEFT's layout (adapter name dropped from the keys, as
    PEFT's _remove_adapter_name_from_key does), the same conversion consolidate applies to DCP shards."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    inner = model.module if hasattr(model, "module") else model
    if not isinstance(model, FSDP) or state is None or not hasattr(inner, "peft_config"):
        inner.save_pretrained(directory, safe_serialization=True, state_dict=state)
        return
    from safetensors.torch import save_file

    tensors = peft_adapter_tensors(state)
    if not tensors:
        raise StageError("FSDP: the gathered state holds no LoRA tensors", "check --target-modules")
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    inner.peft_config["default"].save_pretrained(directory)


def peft_adapter_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """Live LoRA keys (`...q_proj.lora_A.default.weight`) -> a saved adapter's (`...q_proj.lora_A.weight`)."""
    return {key.replace(".default.", "."): value.contiguous() for key, value in state.items() if "lora_" in key}


def gather_dcp(directory: Path) -> dict[str, Any]:
    """Read a DCP checkpoint in one process (no process group) and return its model tensors."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "full.pt"
        dcp_to_torch_save(str(directory), str(target))
        saved = torch.load(target, map_location="cpu", weights_only=True)
    model = saved.get("model")
    if not isinstance(model, dict) or not model:
        raise StageError(f"{directory}: the DCP checkpoint holds no model tensors")
    return model
