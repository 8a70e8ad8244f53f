"""FSDP for the finetune stage: torch's fully_shard (FSDP2) per decoder layer, sharded checkpoints written with
torch.distributed.checkpoint (DCP: every rank writes its own shard, nobody gathers the model to save), and one
full state dict gathered only for the final adapter/model.

FSDP2 runs on CPU over gloo as well as on GPUs over nccl, so this path is exercised for real by the tests with
two CPU processes. Each rank loads the base model into host memory before sharding it (no meta-device loading):
budget host RAM for one full copy per process on the node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.common import StageError, log

DCP_DIR = "dcp"  # checkpoint-<N>/dcp/: .metadata + __<rank>_0.distcp; consolidate gathers it into one file


def shard(model: Any) -> Any:
    """Shard every decoder layer, then the root (embeddings, norm, head), as torchtune and the FSDP2 docs do."""
    from torch.distributed.fsdp import fully_shard

    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise StageError("--fsdp: the model has no *DecoderLayer modules to shard",
                         "FSDP here supports decoder-only transformers (Llama, Mistral, Qwen...); drop fsdp")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    log(f"FSDP: {len(layers)} decoder layers sharded")
    return model


def _options(frozen_too: bool, full: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # LoRA saves only the trainable tensors: the frozen base is the download stage's and never changes.
    return StateDictOptions(ignore_frozen_params=not frozen_too, full_state_dict=full, cpu_offload=full,
                            strict=False)


def save(path: Path, model: Any, optimizer: Any, frozen_too: bool) -> None:
    """Every rank writes its shard of the trainable parameters and optimizer state under path/dcp/."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(frozen_too))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / DCP_DIR))


def load(path: Path, model: Any, optimizer: Any, frozen_too: bool) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (path / DCP_DIR / ".metadata").is_file():
        raise StageError(f"{path}: no {DCP_DIR}/.metadata, so it was not written by an FSDP run",
                         "resume with the same fsdp setting the checkpoint was written with")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(frozen_too))
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(frozen_too))


def full_state(model: Any, frozen_too: bool) -> dict[str, Any]:
    """The whole (trainable, or every) state dict as plain CPU tensors; a collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: dict[str, Any] = get_model_state_dict(model, options=_options(frozen_too, full=True))
    return state


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
