"""GPU (and CPU) family on Hugging Face transformers + peft: seeds 003/004 and the tiny offline example.

Stages call the programs in stages/ (`python -m stages <name>`); torchrun provides DDP/FSDP across nodes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator import memfit
from orchestrator.families import common
from orchestrator.families.base import Family, FitContext, Kind
from orchestrator.families.base import Params as Strict


class HfLora(common.Lora):
    r: common.Positive = 8
    alpha: common.Positive = 32
    target_modules: common.Modules = ["q_proj", "v_proj"]


class HfSettings(Strict):
    model_source: str = Field("tiny", description="tiny | hf://<repo> | s3://bucket/prefix | a local path")
    data: str = Field("examples/data/dolly-tiny.jsonl",
                      description="JSONL file (relative paths: the spec's folder), hf://datasets/<owner>/<name> "
                                  "or s3://bucket/prefix; remote data is fetched and validated by the download stage")
    data_files: list[str] = Field(default_factory=list,
                                  description="globs of the files of a remote dataset to use (default: its training split)")
    format: Literal["dolly", "chat"] = "dolly"
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: HfLora = Field(default_factory=HfLora)
    learning_rate: Annotated[float, Field(gt=0)] = 1e-4
    epochs: Annotated[int, Field(gt=0)] = 1
    max_steps: int = -1
    batch_size: Annotated[int, Field(gt=0)] = 4
    grad_accum: Annotated[int, Field(gt=0)] = 1
    seq_len: Annotated[int, Field(gt=0)] = 512
    packing: bool = True
    dtype: Literal["fp32", "bf16"] = "bf16"
    save_steps: Annotated[int, Field(gt=0)] = 100
    seed: int = 42
    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    nproc_per_node: Annotated[int, Field(gt=0)] = 1
    fsdp: bool = Field(False, description="shard across every rank: FSDP2 for lora/full, FSDP1 for qlora")
    cpu_offload: bool = Field(False, description="with fsdp: sharded parameters (and optimizer step) in host RAM")
    gradient_checkpointing: bool = Field(False, description="recompute each layer's activations in backward")
    rdzv_port: Annotated[int, Field(gt=1023, lt=65536)] = 29500

    @field_validator("data")
    @classmethod
    def _data_source(cls, value: str) -> str:
        if value.startswith("hf://") and not re.fullmatch(r"hf://datasets/[\w.-]+/[\w.-]+/?", value):
            raise ValueError(f"{value!r}: a Hub dataset is hf://datasets/<owner>/<name>")
        return value

    @model_validator(mode="after")
    def _offload_needs_fsdp(self) -> HfSettings:
        if self.cpu_offload and not self.fsdp:
            raise ValueError("cpu_offload: true needs fsdp: true (FSDP offloads the shards it owns)")
        return self

    @property
    def remote_data(self) -> bool:
        return self.data.startswith(("hf://", "s3://"))


# An lm_eval task/group name. It becomes an argv word of `python -m stages evaluate`, so no leading "-"
# (argparse would read a flag) and no whitespace; anything else is quoted by the template.
LmEvalTask = Annotated[str, Field(pattern=r"^[^\s-]\S*$")]


class LmEvalParams(Strict):
    """An optional lm-evaluation-harness run inside the evaluate stage (offline; reported, not a verdict)."""

    tasks: Annotated[list[LmEvalTask], Field(min_length=1)]
    # A folder of task YAMLs; a relative path is relative to the spec's folder, like settings.data.
    include_path: Annotated[str, Field(min_length=1)] | None = None
    limit: Annotated[int, Field(gt=0)] | None = None  # at most this many documents per task
    num_fewshot: Annotated[int, Field(ge=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 1


class EvaluateParams(common.EvaluateParams):
    lm_eval: LmEvalParams | None = None  # None: no lm_eval run, and the script is exactly as without it


class InferenceParams(common.InferenceParams):
    prompts: list[str] = ["What is the capital of France?"]
    max_new_tokens: common.Positive = 32


def _context(settings: Any) -> dict[str, Any]:
    return {}


TRAIN_HINT = ("shard it over more GPUs (fsdp: true, more nodes), offload the shards (cpu_offload: true), use "
              "method: qlora or lora, turn on gradient_checkpointing, or lower batch_size / seq_len")


def _memory(ctx: FitContext) -> memfit.Workload | None:
    """GPU memory per device of the hf stages that use GPUs: finetune (one rank per GPU, FSDP or DDP) and
    evaluate (stages/evaluate.py: device_map="auto" over the node's GPUs, training dtype). download, consolidate,
    merge and inference run on the CPU."""
    s: HfSettings = ctx.settings
    gpus = ctx.resources.gpus_per_node
    if ctx.accelerator.kind != "gpu" or gpus == 0 or ctx.stage.kind not in ("finetune", "evaluate"):
        return None
    arch = memfit.arch_of(s.model_source.removeprefix("hf://"), ctx.spec_dir)
    if arch is None:
        return None
    if ctx.stage.kind == "evaluate":
        devices = gpus or ctx.accelerator.per_node
        work = memfit.Workload(ctx.stage.name, arch, s.dtype, "inference", seq=s.seq_len,
                               hint="give the stage more GPUs (resources.gpus_per_node) or run it on the CPU "
                                    "(resources.gpus_per_node: 0)")
        return memfit.with_device_count(work, devices, "split")
    world = (ctx.resources.nodes or 1) * s.nproc_per_node
    work = memfit.Workload(ctx.stage.name, arch, s.dtype, s.method, cpu_offload=s.cpu_offload,
                           lora_rank=s.lora.r, lora_targets=list(s.lora.target_modules), batch=s.batch_size,
                           seq=s.seq_len, checkpointing=s.gradient_checkpointing, hint=TRAIN_HINT)
    return memfit.with_device_count(work, world, "fsdp") if s.fsdp else work


FAMILY = Family(
    name="hf",
    settings=HfSettings,
    kinds={
        "download": Kind("hf/download.sh.j2", outputs=lambda s, p: [
            "model/config.json", "model/manifest.json", *(["data/dataset.jsonl"] if s.remote_data else [])]),
        "finetune": Kind("hf/finetune.sh.j2", outputs=lambda s, p: ["checkpoints/final"]),
        "consolidate": Kind("hf/consolidate.sh.j2", outputs=lambda s, p: ["adapter/adapter_config.json"]),
        "merge": Kind("hf/merge.sh.j2", outputs=lambda s, p: ["merged/config.json"]),
        "evaluate": Kind("hf/evaluate.sh.j2", EvaluateParams, lambda s, p: ["reports/evaluate.json"]),
        "inference": Kind("hf/inference.sh.j2", InferenceParams, lambda s, p: ["reports/inference.json"], cache=False),
    },
    context=_context,
    memory=_memory,
)

