"""The torchtune 0.6.1 config of each stage kind, built from the family's settings (orchestrator/families/
torchtune.py): component paths of the pinned release, recipe names, and which recipe one process runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: torchtune.py imports this module to render its configs
    from orchestrator.families.torchtune import (
        EvaluateParams,
        FinetuneParams,
        GenerateParams,
        QuantizeParams,
        TuneSettings,
    )

# torchtune 0.6.1 torchtune/training/quantization.py: the quantizer per mode (the mode names its output file).
# 4w packs weights for CUDA's tinygemm kernel (TensorCoreTiledLayout): `aten::_convert_weight_to_int4pack` has
# no CPU kernel in the pinned torch, so it needs the whole bf16 model on one GPU; 8da4w runs on the CPU.
QUANTIZERS = {"4w": "torchtune.training.quantization.Int4WeightOnlyQuantizer",
              "8da4w": "torchtune.training.quantization.Int8DynActInt4WeightQuantizer"}



def _component(path: str, **args: Any) -> dict[str, Any]:
    return {"_component_": path, **args}


def _model(settings: TuneSettings, lora: bool) -> dict[str, Any]:
    module, full, lora_builder = settings.builders
    if not lora:
        return _component(f"{module}.{full}")
    return _component(f"{module}.{lora_builder}", lora_attn_modules=list(settings.lora.attn_modules),
                      apply_lora_to_mlp=settings.lora.apply_to_mlp, apply_lora_to_output=settings.lora.apply_to_output,
                      lora_rank=settings.lora.rank, lora_alpha=settings.lora.alpha, lora_dropout=settings.lora.dropout)


def _common(settings: TuneSettings) -> dict[str, Any]:
    """What every recipe shares. Paths known only at run time (checkpoint_dir, checkpoint_files, output_dir,
    tokenizer path) are merged in by `python -m stages tune-config` from the files actually present."""
    return {
        "tokenizer": _component("torchtune.models.llama3.llama3_tokenizer", max_seq_len=settings.max_seq_len),
        "checkpointer": _component("torchtune.training.FullModelHFCheckpointer", model_type="LLAMA3",
                                   recipe_checkpoint=None),
        "seed": settings.seed,
        "dtype": settings.dtype,
    }


def finetune_config(settings: TuneSettings, params: FinetuneParams) -> dict[str, Any]:
    lora = params.method == "lora"
    logger = ("torchtune.training.metric_logging.WandBLogger" if settings.metric_logger == "wandb"
              else "torchtune.training.metric_logging.DiskLogger")
    return {
        **_common(settings),
        "model": _model(settings, lora),
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": False,
        "dataset": _component(f"torchtune.datasets.{settings.dataset}", packed=False, **settings.dataset_args),
        "shuffle": True,
        "batch_size": settings.batch_size,
        "epochs": settings.epochs,
        "max_steps_per_epoch": settings.max_steps_per_epoch,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "optimizer": _component("torch.optim.AdamW", lr=settings.lora_lr if lora else settings.full_lr,
                                weight_decay=settings.weight_decay if lora else 0.0, fused=True),
        **({"lr_scheduler": _component("torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                                       num_warmup_steps=settings.warmup_steps)} if lora else {}),
        "loss": _component("torchtune.modules.loss.CEWithChunkedOutputLoss"),
        "clip_grad_norm": None,
        "compile": False,
        "device": "cuda",
        "enable_activation_checkpointing": settings.activation_checkpointing,
        "enable_activation_offloading": False,
        "fsdp_cpu_offload": settings.fsdp_cpu_offload,
        **({} if lora else {"custom_sharded_layers": ["tok_embeddings", "output"], "optimizer_in_bwd": False}),
        "metric_logger": _component(logger),
        "log_every_n_steps": 1,
        "log_peak_memory_stats": True,
    }


def evaluate_config(settings: TuneSettings, params: EvaluateParams) -> dict[str, Any]:
    return {**_common(settings), "model": _model(settings, lora=False), "tasks": list(params.tasks),
            "limit": params.limit, "max_seq_length": settings.max_seq_len, "batch_size": params.batch_size,
            "device": settings.single_device(params.device), "enable_kv_cache": True, "quantizer": None}


def quantize_config(settings: TuneSettings, params: QuantizeParams) -> dict[str, Any]:
    device = "cuda" if params.quantizer == "4w" and params.device == "auto" else settings.single_device(params.device)
    return {**_common(settings), "model": _model(settings, lora=False), "device": device,
            "quantizer": _component(QUANTIZERS[params.quantizer], groupsize=params.groupsize)}


def generate_config(settings: TuneSettings, params: GenerateParams) -> dict[str, Any]:
    return {**_common(settings), "model": _model(settings, lora=False),
            "device": settings.single_device(params.device),
            "prompt": {"system": params.system, "user": params.prompt}, "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_k": params.top_k, "enable_kv_cache": True, "quantizer": None}


CONFIGS: dict[str, Callable[[TuneSettings, Any], dict[str, Any]]] = {
    "finetune": finetune_config, "evaluate": evaluate_config, "quantize": quantize_config, "generate": generate_config}
RECIPES = {"full": "full_finetune_distributed", "lora": "lora_finetune_distributed", "evaluate": "eleuther_eval",
           "quantize": "quantize", "generate": "generate"}
SINGLE_DEVICE = {"full": "full_finetune_single_device", "lora": "lora_finetune_single_device"}


def finetune_recipe(settings: TuneSettings, method: str, nodes: int | None) -> str:
    """One process on one node runs the single-device recipe (no torchrun, no FSDP); otherwise the distributed
    one. torchtune 0.6.1 `tune run` refuses torchrun flags for a single-device recipe (torchtune/_cli/run.py)."""
    single = (nodes or 1) == 1 and settings.nproc_per_node == 1
    return (SINGLE_DEVICE if single else RECIPES)[method]
