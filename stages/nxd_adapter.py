"""nxd-adapter: turn a neuronx-distributed (NxD) LoRA adapter into a PEFT adapter, or inspect what NxD saved.

NxD adapters are not PEFT adapters (stages.md defect 13): other config field names, no peft_type/task_type/base
model, and possibly a fused `qkv_proj`. `export` renames, unfuses and writes a full PEFT config; the q/k/v LoRA
pairs are split exactly (the shared lora_A is copied, lora_B is cut by rows), never averaged (defect 18).
`inspect` checks that the saved keys match the save mode asked for (defect 12: merge_sharded_lora=True silently
turns save_lora_base/merge_lora off).

The on-disk layout below is taken from stages.md 3.4 (and the NxD LoraConfig field names); it has NOT been
verified against real NxD output, since no Trainium is available here:

    <adapter-dir>/<tag>/model/dp_rank_XX_tp_rank_XX_pp_rank_XX.pt   torch.save'd dicts of tensors
    <adapter-dir>/<tag>/done                                       written when the save completed
    <adapter-dir>/adapter_config.json    NxD config (save_lora_config_adapter=False, NxD >= 2.23), or a
                                         `lora_config` entry inside a shard (save_lora_config_adapter=True)

Keys look like `...layers.<i>.self_attn.<proj>.lora_A.weight` / `.lora_B.weight` (an adapter name such as
`.default.` is tolerated). A fused GQA projection has one shared `qkv_proj.lora_A.weight` and either
`qkv_proj.lora_B.weight_q/_k/_v` or one `qkv_proj.lora_B.weight_qkv` (or `.weight`) holding the rows [q; k; v].
With merge_sharded_lora=True (adapter_save_mode: adapter) the tensors are gathered to full size; a key whose
shape or values differ between ranks' files is TP-sharded and refused.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from stages.common import StageError, entry, log, write_json, write_manifest

SHARD_RE = re.compile(r"dp_rank_(\d+)_tp_rank_(\d+)_pp_rank_(\d+)\.pt")
KEY_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.([A-Za-z0-9_]+)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_]+)?"
                    r"\.(weight|weight_qkv|weight_q|weight_k|weight_v)$")
PLAIN = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
MODES = ("adapter", "base_and_lora", "merged")


def shard_files(adapter_dir: Path, tag: str) -> list[Path]:
    root = adapter_dir / tag
    if not (root / "done").exists():
        raise StageError(f"{root}: no `done` marker, so the NxD save did not complete",
                         "did the finetune stage finish? it writes lora_adapter/<tag>/done last")
    if any((root / "model").glob("*.pt.tensors")):
        raise StageError(f"{root}/model was saved with xser (*.pt.tensors)", "train without --save_load_xser")
    files = sorted(p for p in (root / "model").glob("*.pt") if SHARD_RE.fullmatch(p.name))
    if not files:
        raise StageError(f"{root}/model: no dp_rank_*_tp_rank_*_pp_rank_*.pt files")
    return files


def load_shards(files: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    import torch

    loaded = []
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:  # truncated/foreign
            raise StageError(f"{path}: cannot be loaded: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(state, dict):
            raise StageError(f"{path}: holds a {type(state).__name__}, not a state dict")
        loaded.append((path, state))
    return loaded


def gather(shards: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One full tensor per key; copies in several ranks' files must be identical (gathered, not TP-sharded)."""
    import torch

    tensors: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    config: dict[str, Any] | None = None
    for path, state in shards:
        for key, value in state.items():
            if key == "lora_config":
                config = dict(value)
                continue
            if not isinstance(value, torch.Tensor):
                raise StageError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
            if key not in tensors:
                tensors[key], origin[key] = value, path
            elif tensors[key].shape != value.shape or not torch.equal(tensors[key], value):
                raise StageError(f"{key} differs between {origin[key].name} and {path.name}: the adapter is "
                                 "TP-sharded (merge_sharded_lora=False)",
                                 "export needs adapter_save_mode: adapter, which gathers the LoRA tensors")
    return tensors, config


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
    return {"hidden": hidden, "q": heads * head_dim, "kv": kv * head_dim, "mlp": int(cfg["intermediate_size"]),
            "layers": int(cfg["num_hidden_layers"])}


def in_out(module: str, dims: dict[str, int]) -> tuple[int, int]:
    return {"q_proj": (dims["hidden"], dims["q"]), "k_proj": (dims["hidden"], dims["kv"]),
            "v_proj": (dims["hidden"], dims["kv"]), "o_proj": (dims["q"], dims["hidden"]),
            "gate_proj": (dims["hidden"], dims["mlp"]), "up_proj": (dims["hidden"], dims["mlp"]),
            "down_proj": (dims["mlp"], dims["hidden"])}[module]


def unfuse(tensors: dict[str, Any], dims: dict[str, int]) -> dict[tuple[int, str, str], tuple[Any, Any]]:
    """NxD keys -> {(layer, block, module): (lora_A, lora_B)} with PEFT module names."""
    groups: dict[tuple[int, str, str], dict[str, Any]] = defaultdict(dict)
    for key, value in tensors.items():
        if "lora_" not in key:
            raise StageError(f"{key}: not a LoRA tensor; an adapter-only save holds lora_ keys only",
                             "adapter_save_mode: adapter (save_lora_base=False) is what export reads")
        match = KEY_RE.search(key)
        if not match:
            raise StageError(f"{key}: not a LoRA key this exporter understands")
        layer, block, module, ab, suffix = match.groups()
        groups[(int(layer), block, module)][f"{ab}.{suffix}"] = value
    pairs: dict[tuple[int, str, str], tuple[Any, Any]] = {}
    for (layer, block, module), parts in sorted(groups.items()):
        where = f"layers.{layer}.{block}.{module}"
        if "lora_A.weight" not in parts:
            raise StageError(f"{where}: no lora_A.weight")
        a = parts["lora_A.weight"]
        if module in PLAIN:
            if "lora_B.weight" not in parts:
                raise StageError(f"{where}: no lora_B.weight")
            pairs[(layer, block, module)] = (a, parts["lora_B.weight"])
        elif module == "qkv_proj":
            if {"lora_B.weight_q", "lora_B.weight_k", "lora_B.weight_v"} <= parts.keys():
                b_q, b_k, b_v = parts["lora_B.weight_q"], parts["lora_B.weight_k"], parts["lora_B.weight_v"]
            else:
                fused = parts.get("lora_B.weight_qkv", parts.get("lora_B.weight"))
                if fused is None:
                    raise StageError(f"{where}: no lora_B weight_q/_k/_v nor weight_qkv")
                rows = dims["q"] + 2 * dims["kv"]
                if fused.shape[0] != rows:
                    raise StageError(f"{where}: fused lora_B has {fused.shape[0]} rows, expected q+k+v = {rows}")
                b_q, b_k, b_v = fused.split([dims["q"], dims["kv"], dims["kv"]], dim=0)
            for name, b in (("q_proj", b_q), ("k_proj", b_k), ("v_proj", b_v)):
                pairs[(layer, block, name)] = (a, b)
        else:
            raise StageError(f"{where}: unknown module {module!r} (known: qkv_proj, {', '.join(sorted(PLAIN))})")
    return pairs


def export(adapter_dir: Path, tag: str, base_model: Path, base_model_id: str, output: Path,
           config_path: Path | None) -> dict[str, Any]:
    from safetensors.torch import save_file

    dims = base_dims(base_model)
    tensors, embedded = gather(load_shards(shard_files(adapter_dir, tag)))
    cfg = nxd_config(adapter_dir, config_path, embedded)
    r = int(cfg.get("r") or cfg["lora_rank"])
    if cfg.get("bias", "none") != "none" or cfg.get("modules_to_save"):
        raise StageError("LoRA biases and modules_to_save are not exported", "train with bias='none'")
    if cfg.get("save_lora_base") or cfg.get("merge_lora"):
        raise StageError("the NxD config says the base model was saved or merged; export reads adapter-only saves")
    pairs = unfuse(tensors, dims)
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
    lora, base = set(), set()
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
    ins.add_argument("--mode", required=True, choices=MODES)
    args = parser.parse_args(argv)
    if args.action == "export":
        export(args.adapter_dir, args.tag, args.base_model, args.base_model_id, args.output, args.config)
    else:
        inspect(args.adapter_dir, args.tag, args.mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
