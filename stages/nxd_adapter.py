"""nxd-adapter: turn a neuronx-distributed (NxD) LoRA adapter into a PEFT adapter, or inspect what NxD saved.

NxD adapters are not PEFT adapters (stages.md defect 13): other config field names, no peft_type/task_type/base
model, a fused `qkv_proj`, and one file per tensor-parallel rank. `export` gathers the TP shards, unfuses q/k/v
exactly (lora_A is shared, lora_B is cut by rows, never averaged: defect 18), drops the KV-head replication, and
writes a full PEFT config. `inspect` checks that the saved keys match the save mode asked for (defect 12).

The layout is NxD 2.28's (tag v2.28.0; the facts, each with its upstream file, are in
tests/fixtures/neuronx_distributed_2_28.json, which the tests build their NxD saves from):

    <adapter-dir>/<tag>/model/dp_rank_00_tp_rank_XX_pp_rank_00.pt   torch.save'd dict per TP rank
                                       (trainer/checkpoint.py save_checkpoint + _get_path)
    <adapter-dir>/<tag>/done           "1", written after every rank finished
    <adapter-dir>/adapter_config.json  the LoraConfig's saved fields (save_lora_config_adapter=False), or a
                                       `lora_config` entry in each shard (True)   (modules/lora/model.py)

Keys are `model.layers.<i>.self_attn.<proj>.lora_A.weight` / `.lora_B.weight`; the GQA `qkv_proj`
(qkv_linear) has lora_B `weight_q/_k/_v` or, with fuse_qkv, `weight_qkv` = [q; k; v] of that rank
(modules/lora/tp_layer.py, modules/qkv_linear.py). TP sharding: ColumnParallel lora_B and every GQA lora_B on
dim 0, RowParallel (o_proj, down_proj) lora_A on dim 1, the other factor whole on every rank. The k/v rows are
the KV rows replicated kv_replicator times, tiled on trn1 (master.repeat(m, 1), modules/qkv_linear.py; NxD's own
merge keeps chunk(m)[0] of them, the same order). trn2 replicates with repeat_interleave instead, an order this
exporter has not been checked against, so the nxd family refuses export_adapter there. The pipeline saves with
merge_sharded_lora=False, because NxD 2.28's own gather truncates the GQA q rows to 1/kv_replicator; a save that
was gathered anyway is read when its shapes are full, and a truncated one is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stages.common import StageError, entry, log, write_json, write_manifest
from stages.nxd_shards import Layout, by_key, in_out, load_shards, lora_pairs, shard_files

MODES = ("adapter", "base_and_lora", "merged")


def nxd_config(adapter_dir: Path, explicit: Path | None, embedded: dict[str, Any] | None) -> dict[str, Any]:
    path = explicit or adapter_dir / "adapter_config.json"
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    if embedded is not None:
        return embedded
    raise StageError(f"no NxD LoRA config: neither {path} nor a `lora_config` entry in the checkpoint")


def base_dims(model_dir: Path) -> dict[str, int]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise StageError(f"{model_dir}: no config.json, so the adapter's shapes cannot be checked")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    heads, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    kv = int(cfg.get("num_key_value_heads") or heads)
    return {"hidden": hidden, "q": heads * head_dim, "kv": kv * head_dim,
            "mlp": int(cfg["intermediate_size"]), "layers": int(cfg["num_hidden_layers"])}


def export(adapter_dir: Path, tag: str, base_model: Path, base_model_id: str, output: Path,
           config_path: Path | None, tp: int | None = None, kv_replicator: int | None = None) -> dict[str, Any]:
    from safetensors.torch import save_file

    dims = base_dims(base_model)
    parts, embedded = by_key(load_shards(shard_files(adapter_dir, tag, tp)))
    cfg = nxd_config(adapter_dir, config_path, embedded)
    r = int(cfg.get("r") or cfg["lora_rank"])
    if cfg.get("bias", "none") != "none" or cfg.get("modules_to_save"):
        raise StageError("LoRA biases and modules_to_save are not exported", "train with bias='none'")
    if cfg.get("save_lora_base") or cfg.get("merge_lora"):
        raise StageError("the NxD config says the base model was saved or merged; export reads adapter-only saves")
    pairs = lora_pairs(parts, Layout(dims, kv_replicator))
    modules = sorted({module for _, _, module in pairs})
    for layer in range(dims["layers"]):
        missing = [m for m in modules if not any((layer, b, m) in pairs for b in ("self_attn", "mlp"))]
        if missing:
            raise StageError(f"layer {layer} has no LoRA for {missing}: the adapter is incomplete")
    weights = {}
    for (layer, block, module), (a, b) in pairs.items():
        fan_in, fan_out = in_out(module, dims)
        if tuple(a.shape) != (r, fan_in) or tuple(b.shape) != (fan_out, r):
            raise StageError(f"layers.{layer}.{block}.{module}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}; "
                             f"expected ({r}, {fan_in}) and ({fan_out}, {r}) for rank {r} on this base model")
        prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
        weights[f"{prefix}.lora_A.weight"] = a.detach().clone().contiguous()  # q/k/v share A: one copy each
        weights[f"{prefix}.lora_B.weight"] = b.detach().clone().contiguous()
    output.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(output / "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_id,
        "r": r, "lora_alpha": cfg.get("lora_alpha", 8), "lora_dropout": cfg.get("lora_dropout", 0.0),
        "bias": "none", "use_rslora": bool(cfg.get("use_rslora", False)), "target_modules": modules,
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
    }
    write_json(output / "adapter_config.json", peft_config)
    write_manifest(output)
    log(f"exported {len(pairs)} LoRA pair(s) over {dims['layers']} layer(s), targets {modules}, r {r} -> {output}")
    return peft_config


def inspect(adapter_dir: Path, tag: str, mode: str) -> tuple[int, int]:
    """Count LoRA and base keys over all shards and compare with what `mode` must have saved."""
    lora: set[str] = set()
    base: set[str] = set()
    for _, state in load_shards(shard_files(adapter_dir, tag)):
        for key in state:
            if key != "lora_config":
                (lora if "lora_" in key else base).add(key)
    expected = {"adapter": (True, False), "base_and_lora": (True, True), "merged": (False, True)}[mode]
    if (bool(lora), bool(base)) != expected:
        raise StageError(f"{adapter_dir / tag}: {len(lora)} LoRA and {len(base)} base key(s), which is not what "
                         f"adapter_save_mode {mode!r} saves",
                         "merge_sharded_lora=True silently turns save_lora_base and merge_lora off (stages.md 3.4)")
    log(f"{adapter_dir / tag}: {len(lora)} LoRA key(s), {len(base)} base key(s): matches mode {mode}")
    return len(lora), len(base)


@entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages nxd-adapter")
    sub = parser.add_subparsers(dest="action", required=True)
    exp = sub.add_parser("export", help="NxD LoRA adapter -> PEFT adapter")
    ins = sub.add_parser("inspect", help="check the saved keys against the save mode")
    for p in (exp, ins):
        p.add_argument("--adapter-dir", required=True, type=Path, help="NxD lora_save_dir, e.g. lora_adapter")
        p.add_argument("--tag", default="lora")
    exp.add_argument("--base-model", required=True, type=Path, help="HF model folder (its config.json)")
    exp.add_argument("--base-model-id", required=True, help="written as base_model_name_or_path")
    exp.add_argument("--output", required=True, type=Path)
    exp.add_argument("--config", type=Path, help="NxD adapter_config.json; default <adapter-dir>/adapter_config.json")
    exp.add_argument("--tp-size", type=int, help="the finetune's TP degree: that many rank files are required")
    exp.add_argument("--kv-replicator", type=int, help="the trainer's --kv_replicator (default: from the shapes)")
    ins.add_argument("--mode", required=True, choices=MODES)
    args = parser.parse_args(argv)
    if args.action == "export":
        export(args.adapter_dir, args.tag, args.base_model, args.base_model_id, args.output, args.config,
               args.tp_size, args.kv_replicator)
    else:
        inspect(args.adapter_dir, args.tag, args.mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
