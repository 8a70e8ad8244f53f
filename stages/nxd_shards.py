"""Reading an NxD 2.28 LoRA save (stages/nxd_adapter.py has the layout, each fact with its upstream file): the
per-TP-rank shard files, their keys, and the full LoRA tensors gathered from them (column- and row-parallel
shards joined, the GQA q/k/v split and the KV replication dropped)."""

from __future__ import annotations

import pickle
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import StageError

SHARD_RE = re.compile(r"dp_rank_(\d+)_tp_rank_(\d+)_pp_rank_(\d+)\.pt")
KEY_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.([A-Za-z0-9_]+)\.(lora_A|lora_B)"
                    r"\.(weight|weight_qkv|weight_q|weight_k|weight_v)$")
COLUMN = {"q_proj", "k_proj", "v_proj"}  # ColumnParallelLinear in NxD's modeling_llama_nxd.py: lora_B on dim 0
ROW = {"o_proj", "down_proj"}  # RowParallelLinear: lora_A sharded on dim 1


@dataclass(frozen=True)
class Layout:
    """How the finetune sharded the adapter: the base model's sizes and the KV replication (trn1 order)."""

    dims: dict[str, int]
    kv_replicator: int | None  # None: inferred from the shapes


def shard_files(adapter_dir: Path, tag: str, tp: int | None = None) -> list[Path]:
    """One file per TP rank, in rank order, of a completed save."""
    root = adapter_dir / tag
    if not (root / "done").exists():
        raise StageError(f"{root}: no `done` marker, so the NxD save did not complete",
                         "did the finetune stage finish? NxD writes lora_adapter/<tag>/done after every rank")
    if any((root / "model").glob("*.pt.tensors")):
        raise StageError(f"{root}/model was saved with xser (*.pt.tensors)", "train without --save_load_xser")
    ranks: dict[int, Path] = {}
    for path in (root / "model").glob("*.pt"):
        match = SHARD_RE.fullmatch(path.name)
        if not match:
            continue
        dp, rank, pp = (int(g) for g in match.groups())
        if dp or pp:
            raise StageError(f"{path}: dp or pp rank is not 0; export reads a tensor-parallel save with PP 1")
        ranks[rank] = path
    if not ranks:
        raise StageError(f"{root}/model: no dp_rank_00_tp_rank_*_pp_rank_00.pt files")
    if sorted(ranks) != list(range(len(ranks))):
        raise StageError(f"{root}/model: TP rank files {sorted(ranks)} are not 0..{len(ranks) - 1}: some are missing")
    if tp is not None and len(ranks) != tp:
        raise StageError(f"{root}/model: {len(ranks)} TP rank file(s), but the finetune ran with TP {tp}")
    return [ranks[rank] for rank in range(len(ranks))]


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


def by_key(shards: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
    """{key: its tensor in each rank's file, in rank order}, and the embedded `lora_config` if there is one."""
    import torch

    parts: dict[str, list[Any]] = defaultdict(list)
    config: dict[str, Any] | None = None
    for path, state in shards:
        for key, value in state.items():
            if key == "lora_config":
                config = dict(value)
                continue
            if not isinstance(value, torch.Tensor):
                raise StageError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
            parts[key].append(value)
    for key, values in parts.items():
        if len(values) != len(shards):
            raise StageError(f"{key} is in {len(values)} of the {len(shards)} rank files: the save is incomplete")
        if any(v.shape != values[0].shape for v in values):
            raise StageError(f"{key}: the rank files hold different shapes {sorted({tuple(v.shape) for v in values})}")
    return dict(parts), config


def whole(key: str, parts: list[Any]) -> Any:
    """A factor NxD keeps whole on every rank (lora_A of a column layer, lora_B of a row layer): rank 0's, as
    NxD's own merge_sharded_lora_weights keeps it."""
    del key
    return parts[0]


def sharded(key: str, parts: list[Any], dim: int, size: int) -> Any:
    """The full tensor from per-rank shards on `dim` (or from a save gathered already: every rank whole)."""
    import torch

    each = parts[0].shape[dim]
    if each * len(parts) == size:
        return torch.cat(parts, dim=dim)
    if each == size:
        return parts[0]
    raise StageError(f"{key}: {each} on dim {dim} in each of {len(parts)} rank file(s); expected {size} in all "
                     "for this base model")


def kv_rows(key: str, parts: list[Any], layout: Layout) -> Any:
    """A GQA k or v lora_B: gather the ranks, then keep one copy of the KV rows, tiled kv_replicator times."""
    import torch

    kv, n, each = layout.dims["kv"], len(parts), parts[0].shape[0]
    replicas = layout.kv_replicator or (each * n // kv if each * n % kv == 0 else 0)
    if each == kv and each * n != kv * replicas:
        return parts[0]  # gathered and de-replicated by NxD already (merge_sharded_lora=True), or TP 1
    if replicas < 1 or each * n != kv * replicas:
        raise StageError(f"{key}: {each} rows in each of {n} rank file(s) is not {kv} KV rows x kv_replicator "
                         f"{layout.kv_replicator or '?'}")
    copies = torch.cat(parts, dim=0).reshape(replicas, kv, -1)
    for i in range(1, replicas):  # NxD sums the replicas' gradients (modules/qkv_linear_utils.py): copies stay equal
        if not torch.allclose(copies[i], copies[0], rtol=1e-3, atol=1e-6):
            raise StageError(f"{key}: KV replica {i} differs from replica 0, so these shards are not in trn1's tiled "
                             "replication order", "export reads saves made on trn1/trn1n")
    return copies[0].clone()


def gqa_qkv(where: str, entries: dict[str, tuple[str, list[Any]]], layout: Layout) -> dict[str, tuple[Any, Any]]:
    """LoraGQAQKVParallelLinear -> q/k/v pairs sharing lora_A (modules/lora/tp_layer.py, modules/qkv_linear.py)."""
    q, kv = layout.dims["q"], layout.dims["kv"]
    a = whole(*need(entries, "lora_A.weight", where))
    if "lora_B.weight" in entries:
        key, parts = entries["lora_B.weight"]
        if len(parts) > 1:
            raise StageError(f"{key}: a ColumnParallel qkv_proj (fuse_qkv without qkv_linear) interleaves q/k/v "
                             "in its TP shards (stride 3), which export does not unpick", "train with qkv_linear")
        b_q, b_k, b_v = parts[0].split([q, kv, kv], dim=0)
    elif "lora_B.weight_qkv" in entries:  # fuse_qkv: each rank holds cat(q_r, k_r, v_r)
        key, parts = entries["lora_B.weight_qkv"]
        n, rows = len(parts), parts[0].shape[0]
        q_each = q // n
        kv_each, odd = divmod(rows - q_each, 2)
        if q % n or odd or kv_each <= 0:
            raise StageError(f"{key}: {rows} rows per rank do not split into q {q}/{n} + 2 equal k/v parts")
        pieces = [part.split([q_each, kv_each, kv_each], dim=0) for part in parts]
        b_q = sharded(key, [p[0] for p in pieces], 0, q)
        b_k = kv_rows(key + "[k]", [p[1] for p in pieces], layout)
        b_v = kv_rows(key + "[v]", [p[2] for p in pieces], layout)
    else:
        key, parts = need(entries, "lora_B.weight_q", where)
        m = layout.kv_replicator or 1
        if m > 1 and parts[0].shape[0] * m == q and parts[0].shape[0] * len(parts) != q:
            raise StageError(f"{key}: {parts[0].shape[0]} q rows per file = 1/{m} of {q}: NxD 2.28's "
                             "merge_sharded_lora truncated them", "train with merge_sharded_lora unset (false)")
        b_q = sharded(key, parts, 0, q)
        b_k = kv_rows(*need(entries, "lora_B.weight_k", where), layout)
        b_v = kv_rows(*need(entries, "lora_B.weight_v", where), layout)
    return {"q_proj": (a, b_q), "k_proj": (a, b_k), "v_proj": (a, b_v)}


def need(entries: dict[str, tuple[str, list[Any]]], name: str, where: str) -> tuple[str, list[Any]]:
    if name not in entries:
        raise StageError(f"{where}: no {name} (has {', '.join(sorted(entries))})")
    return entries[name]


def in_out(module: str, dims: dict[str, int]) -> tuple[int, int]:
    return {"q_proj": (dims["hidden"], dims["q"]), "k_proj": (dims["hidden"], dims["kv"]),
            "v_proj": (dims["hidden"], dims["kv"]), "o_proj": (dims["q"], dims["hidden"]),
            "down_proj": (dims["mlp"], dims["hidden"])}[module]


def lora_pairs(parts: dict[str, list[Any]], layout: Layout) -> dict[tuple[int, str, str], tuple[Any, Any]]:
    """NxD keys and TP shards -> {(layer, block, module): (lora_A, lora_B)} full tensors with PEFT module names."""
    groups: dict[tuple[int, str, str], dict[str, tuple[str, list[Any]]]] = defaultdict(dict)
    for key, values in parts.items():
        if "lora_" not in key:
            raise StageError(f"{key}: not a LoRA tensor; an adapter-only save holds lora_ keys only",
                             "adapter_save_mode: adapter (save_lora_base=False) is what export reads")
        match = KEY_RE.search(key)
        if not match:
            raise StageError(f"{key}: not a LoRA key this exporter understands")
        layer, block, module, ab, suffix = match.groups()
        groups[(int(layer), block, module)][f"{ab}.{suffix}"] = (key, values)
    pairs: dict[tuple[int, str, str], tuple[Any, Any]] = {}
    for (layer, block, module), entries in sorted(groups.items()):
        where = f"layers.{layer}.{block}.{module}"
        if module == "qkv_proj":
            for name, pair in gqa_qkv(where, entries, layout).items():
                pairs[(layer, block, name)] = pair
        elif module in COLUMN:
            fan_out = in_out(module, layout.dims)[1]
            key, values = need(entries, "lora_B.weight", where)
            pairs[(layer, block, module)] = (whole(*need(entries, "lora_A.weight", where)),
                                             sharded(key, values, 0, fan_out))
        elif module in ROW:
            fan_in = in_out(module, layout.dims)[0]
            key, values = need(entries, "lora_A.weight", where)
            pairs[(layer, block, module)] = (sharded(key, values, 1, fan_in),
                                             whole(*need(entries, "lora_B.weight", where)))
        elif module == "gate_up_proj":
            raise StageError(f"{where}: NxD's gate_up_proj is a stride-2 ColumnParallelLinear whose TP shards "
                             "interleave gate and up rows; export does not unpick them",
                             "target qkv_proj, o_proj or down_proj")
        else:
            raise StageError(f"{where}: unknown module {module!r} (known: qkv_proj, "
                             f"{', '.join(sorted(COLUMN | ROW))})")
    return pairs
