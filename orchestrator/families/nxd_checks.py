"""The nxd family's cross-stage checks: the stages finetune, evaluate and export_adapter need before them, the
batch arithmetic of data parallelism, and what the adapter exporter can read (orchestrator/families/nxd.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator import dag, yamlsrc
from orchestrator.families import common
from orchestrator.families.base import family_of
from orchestrator.spec import Pipeline, resolve_after
from orchestrator.yamlsrc import error_at

if TYPE_CHECKING:  # types only: nxd.py imports this module for its check
    from orchestrator.families.nxd import NxdSettings


def _ours(pipeline: Pipeline) -> dict[str, int]:
    return {s.kind: i for i, s in enumerate(pipeline.stages) if family_of(pipeline, s) == "nxd"}


def _ancestors(pipeline: Pipeline, name: str) -> set[str]:
    return dag.upstream(resolve_after(pipeline.stages), name)


def check(source: yamlsrc.Located, pipeline: Pipeline, settings: NxdSettings) -> None:
    kinds = _ours(pipeline)
    if not kinds:
        return
    common.require_venv(source, pipeline, "nxd", "/fsx/ubuntu/nxd_lora/env_nxd")
    if "finetune" in kinds:
        index = kinds["finetune"]
        if "convert" not in kinds and settings.pretrained_ckpt is None:
            raise error_at(source, ("stages", index), "finetune needs a converted NxD checkpoint: add a `convert` "
                           "stage before it, or set settings.pretrained_ckpt")
        if "convert" in kinds:
            convert = pipeline.stages[kinds["convert"]].name
            if convert not in _ancestors(pipeline, pipeline.stages[index].name):
                raise error_at(source, ("stages", index), f"finetune does not wait for {convert!r}, whose shards it "
                               "loads", f"add {convert!r} to its `after:`")
        nodes = pipeline.stages[index].resources.nodes or 1
        dp = settings.data_parallel(nodes)
        if settings.global_batch_size % (settings.micro_batch_size * dp):
            raise error_at(source, ("settings", "global_batch_size"),
                           f"global_batch_size {settings.global_batch_size} is not a multiple of micro_batch_size "
                           f"{settings.micro_batch_size} x data parallel {dp} ({nodes} node(s) x "
                           f"{settings.cores_per_node} cores / TP {settings.tp} / PP {settings.pp})")
    if "convert" in kinds and settings.pretrained_ckpt is not None:
        raise error_at(source, ("settings", "pretrained_ckpt"), "pretrained_ckpt is set but the pipeline also "
                       "converts a checkpoint: finetune would load only one of them", "drop one of the two")
    _check_data_stages(source, pipeline, kinds)
    if "export_adapter" in kinds:
        _check_export(source, kinds["export_adapter"], settings)


def _check_export(source: yamlsrc.Located, index: int, settings: NxdSettings) -> None:
    """What `nxd-adapter export` can turn into a PEFT adapter (NxD 2.28 layouts, stages/nxd_adapter.py)."""
    if settings.adapter_save_mode != "adapter":
        raise error_at(source, ("stages", index), f"export_adapter needs adapter_save_mode: adapter, not "
                       f"{settings.adapter_save_mode!r} (the other modes save base weights, not a LoRA adapter)")
    if settings.hw_backend != "trn1":
        raise error_at(source, ("settings", "instance_type"), f"export_adapter reads saves made on trn1 only: on "
                       f"{settings.instance_type} NxD replicates the KV rows with repeat_interleave "
                       "(modules/qkv_linear.py), an order the exporter has not been checked against",
                       "use trn1.32xlarge / trn1n.32xlarge, or drop export_adapter")
    if settings.fuse_qkv and not settings.qkv_linear:
        raise error_at(source, ("settings", "fuse_qkv"), "export_adapter cannot unpick a fused qkv_proj without "
                       "qkv_linear: its TP shards interleave q, k and v (ColumnParallelLinear, stride 3)",
                       "set qkv_linear: true")
    if "gate_up_proj" in settings.target_modules:
        raise error_at(source, ("settings", "lora", "target_modules"), "export_adapter cannot unpick gate_up_proj: "
                       "its TP shards interleave gate and up rows (ColumnParallelLinear, stride 2)",
                       "target qkv_proj, o_proj and/or down_proj")


def _check_data_stages(source: yamlsrc.Located, pipeline: Pipeline, kinds: dict[str, int]) -> None:
    """finetune reads prepare_data's train split when there is one; evaluate needs that split and the merged model."""
    needs = {"finetune": ["prepare_data"], "evaluate": ["prepare_data", "merge"]}
    for kind, required in needs.items():
        if kind not in kinds or (kind == "finetune" and "prepare_data" not in kinds):
            continue
        stage = pipeline.stages[kinds[kind]].name
        for other in required:
            if other not in kinds:
                raise error_at(source, ("stages", kinds[kind]), f"{kind} needs a `{other}` stage before it",
                               f"add {{name: {other}, kind: {other}}}")
            name = pipeline.stages[kinds[other]].name
            if name not in _ancestors(pipeline, stage):
                raise error_at(source, ("stages", kinds[kind]), f"{stage} does not wait for {name!r}, whose "
                               "output it reads", f"add {name!r} to its `after:`")
