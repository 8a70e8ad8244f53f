"""GPU + torchtune: seed 002 (Llama 3 70B full fine-tune, LoRA, evaluate, quantize, generate) on Slurm.

Every torchtune config is rendered from these settings with the component paths of the pinned release
(stages.md 4.1: the 2024 configs name `torchtune.utils.*` paths that no longer exist, torchtune#1990), written
into the run directory with the paths known only at run time merged in, checked with `tune validate`, then
run. A dataset builder the pinned release lacks is rejected when the spec is validated, before anything is
submitted.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from orchestrator import dag, yamlsrc
from orchestrator.families import tune_configs
from orchestrator.families.base import Family, Kind, Params, family_of
from orchestrator.families.base import Params as Strict
from orchestrator.spec import Pipeline, resolve_after
from orchestrator.yamlsrc import error_at

# Pinned (stages.md defect 20; torchtune#2883: development has wound down, v0.6.1 is the last release).
# torch is pinned too: lm_eval asks only for torch>=1.8, so an unpinned env takes the newest torch, which
# torchao 0.10.0's C++ ops were not built for (pytorch/ao#2919: torchao 0.10.0 is built against torch 2.7.0,
# the release torchtune 0.6.1 and torchdata 0.11.0 came out with).
PINS = ["torch==2.7.0", "torchtune==0.6.1", "torchao==0.10.0", "torchdata==0.11.0", "lm_eval==0.4.8", "omegaconf",
        "pyyaml"]


# model setting -> (module, full builder, LoRA builder)
MODELS: dict[str, tuple[str, str, str]] = {
    "llama3_8b": ("torchtune.models.llama3", "llama3_8b", "lora_llama3_8b"),
    "llama3_70b": ("torchtune.models.llama3", "llama3_70b", "lora_llama3_70b"),
    "llama3_1_8b": ("torchtune.models.llama3_1", "llama3_1_8b", "lora_llama3_1_8b"),
    "llama3_1_70b": ("torchtune.models.llama3_1", "llama3_1_70b", "lora_llama3_1_70b"),
    "llama3_3_70b": ("torchtune.models.llama3_3", "llama3_3_70b", "lora_llama3_3_70b"),
}
DATASETS = ("alpaca_dataset", "alpaca_cleaned_dataset", "wikitext_dataset", "slimorca_dataset", "samsum_dataset",
            "grammar_dataset", "chat_dataset", "instruct_dataset", "text_completion_dataset")
# Parameters per model setting (the builders' sizes: Llama 3 8B 8.03e9, 70B 70.55e9, the same for 3.1 and 3.3).
PARAMS = {"llama3_8b": 8.03e9, "llama3_70b": 70.55e9, "llama3_1_8b": 8.03e9, "llama3_1_70b": 70.55e9,
          "llama3_3_70b": 70.55e9}
DTYPE_BYTES = {"bf16": 2, "fp32": 4}
# What a single-device recipe needs besides the weights (activations, KV cache, CUDA context): a quarter more.
HEADROOM = 1.25


class TuneLora(Strict):
    rank: Annotated[int, Field(gt=0)] = 16
    alpha: Annotated[float, Field(gt=0)] = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    attn_modules: Annotated[list[Literal["q_proj", "k_proj", "v_proj", "output_proj"]], Field(min_length=1)] = [
        "q_proj", "k_proj", "v_proj"]
    apply_to_mlp: bool = False
    apply_to_output: bool = False


class TuneSettings(Strict):
    model_id: str = Field("meta-llama/Meta-Llama-3-70B", description="Hub repo `tune download` fetches")
    model: Literal["llama3_8b", "llama3_70b", "llama3_1_8b", "llama3_1_70b", "llama3_3_70b"] = "llama3_70b"
    pins: list[str] = Field(default_factory=lambda: list(PINS), description="pip pins of the torchtune env")
    dataset: str = Field("alpaca_dataset", description="a torchtune.datasets builder")
    dataset_args: dict[str, str | int | float | bool] = Field(default_factory=dict)
    nproc_per_node: Annotated[int, Field(gt=0, le=64)] = 8
    rdzv_port: Annotated[int, Field(gt=1023, lt=65536)] = 29500
    seed: int = 1234
    dtype: Literal["bf16", "fp32"] = "bf16"
    max_seq_len: Annotated[int, Field(gt=0)] = 4096
    epochs: Annotated[int, Field(gt=0)] = 1
    max_steps_per_epoch: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 2
    gradient_accumulation_steps: Annotated[int, Field(gt=0)] = 1
    full_lr: Annotated[float, Field(gt=0)] = 2e-5
    lora_lr: Annotated[float, Field(gt=0)] = 3e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    activation_checkpointing: bool = True
    fsdp_cpu_offload: bool = True
    lora: TuneLora = Field(default_factory=TuneLora)
    metric_logger: Literal["disk", "wandb"] = Field("disk", description="wandb needs a WANDB_API_KEY secret")
    gpu_memory_gib: Annotated[float, Field(gt=0)] = Field(
        80, description="memory of one GPU of the nodes (p5.48xlarge H100: 80); `device: auto` stages use it")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"{value!r} is not a torchtune.datasets builder of torchtune 0.6 "
                             f"(known: {', '.join(DATASETS)})")
        return value

    @property
    def builders(self) -> tuple[str, str, str]:
        return MODELS[self.model]

    def weights_gib(self) -> float:
        return PARAMS[self.model] * DTYPE_BYTES[self.dtype] / 2**30

    def single_device(self, device: str) -> str:
        """The device of a single-device recipe (eleuther_eval, quantize, generate build the whole model on one
        device): `auto` is the GPU when the weights fit on one with headroom, else the CPU, as seed 002's
        repository ran 70B evaluation and quantization (3.test_cases/torchtune/.../evaluate.yaml: device: cpu)."""
        if device != "auto":
            return device
        return "cuda" if self.fits_one_gpu() else "cpu"

    def fits_one_gpu(self) -> bool:
        return self.weights_gib() * HEADROOM <= self.gpu_memory_gib


class FinetuneParams(Params):
    method: Literal["lora", "full"] = "lora"


# auto: the GPU when the model fits on one, else the CPU (TuneSettings.single_device); stages.md defect 22.
Device = Literal["auto", "cuda", "cpu"]


class EvaluateParams(Params):
    source: str | None = Field(None, description="the finetune stage whose newest epoch is evaluated")
    tasks: Annotated[list[str], Field(min_length=1)] = ["truthfulqa_mc2"]
    # A folder of lm-eval task YAMLs; a relative path is relative to the spec's folder (the job runs elsewhere).
    include_path: Annotated[str, Field(min_length=1)] | None = None
    limit: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 8
    device: Device = "auto"
    min_score: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="fail the stage when the first task's acc is below this")


class QuantizeParams(Params):
    source: str | None = None
    quantizer: Literal["4w", "8da4w"] = Field("4w", description="4w: int4 weight-only (CUDA); 8da4w: int8 dynamic "
                                              "activations + int4 weights (runs on CPU)")
    groupsize: Annotated[int, Field(gt=0)] = 256
    device: Device = "auto"


class GenerateParams(Params):
    source: str | None = Field(None, description="a finetune stage, or `base` for the downloaded model")
    prompt: str = "Hello, my name is"
    system: str | None = None
    max_new_tokens: Annotated[int, Field(gt=0)] = 300
    temperature: Annotated[float, Field(ge=0)] = 0.6
    top_k: Annotated[int, Field(gt=0)] = 300
    device: Device = "auto"


USES_SOURCE = ("evaluate", "quantize", "generate")


def _check(source: yamlsrc.Located, pipeline: Pipeline, settings: Any) -> None:
    """`source` must name a finetune stage this stage waits for (directly or not), or be implied by there being
    exactly one; otherwise the stage could run before the checkpoint it reads exists."""
    mine = [(i, s) for i, s in enumerate(pipeline.stages) if family_of(pipeline, s) == "torchtune"]
    finetunes = [s.name for _, s in mine if s.kind == "finetune"]
    methods: dict[str, str] = {}
    for index, stage in mine:
        if stage.kind == "finetune":
            method = str(stage.params.get("method", "lora"))
            if method in methods:
                raise error_at(source, ("stages", index, "params", "method"),
                               f"{stage.name!r} and {methods[method]!r} are both {method} finetunes and would write "
                               f"the same tuned/{method}/ directory", "keep one finetune per method")
            methods[method] = stage.name
    parents = resolve_after(pipeline.stages)
    for index, stage in mine:
        if stage.kind not in USES_SOURCE:
            continue
        named = stage.params.get("source")
        if named == "base" and stage.kind == "generate":
            continue
        if named is None:
            if len(finetunes) != 1:
                raise error_at(source, ("stages", index, "params"),
                               f"{stage.kind} stage {stage.name!r} must say which finetune it reads: "
                               f"{len(finetunes)} finetune stages", f"add params: {{source: <one of {finetunes}>}}")
            named = finetunes[0]
        elif named not in finetunes:
            raise error_at(source, ("stages", index, "params", "source"),
                           f"{named!r} is not a torchtune finetune stage of this pipeline",
                           f"finetune stages: {', '.join(finetunes) or 'none'}")
        if named not in dag.upstream(parents, stage.name):
            raise error_at(source, ("stages", index), f"{stage.name!r} reads {named!r} but does not wait for it",
                           f"add after: [{named}]")
    for index, stage in mine:
        if stage.kind in USES_SOURCE:
            _check_fits(source, index, stage.kind, stage.params, settings)


def _check_fits(source: yamlsrc.Located, index: int, kind: str, params: dict[str, Any], settings: Any) -> None:
    """A single-device recipe told to use the GPU must fit on one: 70B in bf16 on an 80 GiB GPU would fail at
    load after the queue wait (stages.md defect 22)."""
    assert isinstance(settings, TuneSettings)
    device = params.get("device", "auto")
    cuda_only = kind == "quantize" and params.get("quantizer", "4w") == "4w"
    if cuda_only and device == "cpu":
        raise error_at(source, ("stages", index, "params", "device"),
                       "quantizer 4w (int4 weight-only) packs weights for CUDA: torch has no CPU kernel for it "
                       "(aten::_convert_weight_to_int4pack)", "use quantizer: 8da4w on the CPU, or device: cuda")
    if (device == "cuda" or cuda_only) and not settings.fits_one_gpu():
        need = settings.weights_gib() * HEADROOM
        hint = ("use quantizer: 8da4w, which quantizes on the CPU" if cuda_only else
                "use device: cpu (or auto)")
        raise error_at(source, ("stages", index, "params", "quantizer" if cuda_only and device != "cuda" else "device"),
                       f"{kind}: {settings.model} in {settings.dtype} needs ~{need:.0f} GiB on one GPU "
                       f"({settings.weights_gib():.0f} GiB of weights), one GPU has {settings.gpu_memory_gib:g} GiB",
                       f"{hint}; torchtune 0.6.1's eleuther_eval, quantize and generate recipes are single-device")


def _context(settings: Any) -> dict[str, Any]:
    assert isinstance(settings, TuneSettings)

    def config(kind: str, params: Any) -> str:
        # JSON is YAML: one quoted scalar per value, so nothing in it is ever read by the shell (heredoc 'EOF').
        return json.dumps(tune_configs.CONFIGS[kind](settings, params), indent=2)

    def recipe(method: str, nodes: int | None) -> str:
        return tune_configs.finetune_recipe(settings, method, nodes)

    return {"tune_config": config, "recipes": tune_configs.RECIPES, "finetune_recipe": recipe, "pins": settings.pins}


def _epoch_dir(settings: Any, params: Any) -> list[str]:
    return [f"tuned/{params.method}/epoch_{settings.epochs - 1}"]


FAMILY = Family(
    name="torchtune",
    settings=TuneSettings,
    kinds={
        "create_env": Kind("torchtune/create_env.sh.j2"),
        "download": Kind("torchtune/download.sh.j2", outputs=lambda s, p: ["model/config.json"]),
        "finetune": Kind("torchtune/finetune.sh.j2", FinetuneParams, _epoch_dir),
        "evaluate": Kind("torchtune/evaluate.sh.j2", EvaluateParams),
        "quantize": Kind("torchtune/quantize.sh.j2", QuantizeParams),
        "generate": Kind("torchtune/generate.sh.j2", GenerateParams, cache=False),
    },
    check=_check,
    context=_context,
)
