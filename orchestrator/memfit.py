"""Memory fit at validate time: does each GPU or Trainium stage's peak device memory fit the instance's devices?

No torch here: an estimate from the model's parameter count (a known size named in the model id, or the
model's config.json when it is already on disk), dtype, method, sharding, optimizer and CPU offload, checked
against the per-device memory of the cluster profile's accelerator. A stage that cannot fit is refused before
anything is queued; one close to the limit gets a warning.

Per-parameter bytes (what each term counts, and where the numbers come from):
- weights: 2 bytes (bf16) or 4 (fp32) per parameter; bitsandbytes NF4 (QLoRA) 0.5 bytes plus one fp32 absmax
  per 64-weight block (0.0625), for the decoder's linear layers only: embeddings, norms and lm_head stay in the
  compute dtype (bitsandbytes docs "4-bit quantization"; transformers skips lm_head).
- training state per trainable parameter: weight + gradient + AdamW's two moments (exp_avg, exp_avg_sq) —
  "Model training anatomy" in the transformers docs (model_memory_anatomy.md: weights 4, gradients 4, AdamW
  states 8 bytes per parameter in fp32) and ZeRO (Rajbhandari et al. 2020, sec. 3.1: 2 + 2 + K=12 bytes for
  mixed-precision Adam). torch's AdamW keeps its moments in the parameter's dtype, so a bf16 full fine-tune
  holds 2+2+4 = 8 bytes per parameter; LoRA adapters are fp32 (PEFT upcasts adapters of a bf16 base,
  autocast_adapter_dtype): 16 bytes per LoRA parameter.
- sharding: FSDP/ZeRO-3 divides weights and training state by the data-parallel world size (ZeRO "P_os+g+p"),
  tensor parallelism by the TP degree; CPU offload keeps them in host RAM instead. FSDP gathers one unit's full
  weights at a time (plus one prefetched) and keeps the root unit (embeddings, final norm, lm_head) gathered.
- activations: per layer and token, 17·h + 8·i bytes in 16-bit (Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", sec. 4.1: 34·s·b·h for a 4h GELU MLP, of which 15·s·b·h attention
  and norms, with the 5·a·s/h attention-matrix term dropped because SDPA/flash attention does not keep it, and the
  MLP term taken for SwiGLU's three projections); with gradient checkpointing only each layer's input
  (s·b·h·dtype) is kept, plus one layer's activations during its recompute. Logits: s·b·vocab·(dtype + 4 + 4)
  (transformers upcasts logits to fp32 for the loss, and their gradient is fp32).
- overhead: 20 % on the transient terms (caching allocator fragmentation) + 2 GiB (CUDA context, cuBLAS and NCCL
  workspaces). Checked against PEFT's published FSDP-QLoRA figures for Llama-2-70B on 2 GPUs (docs/source/
  accelerate/fsdp.md: 35.6 GB per GPU without CPU offload, 19.6 GB with it; this model: ~34 and ~14 GB) and seed
  004's 22 GB per 24 GB GPU (this model: ~19 GB): an estimate, which can be low by a few GiB; hence the warning
  margin.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

GIB = 1024**3
WARN_FRACTION = 0.85  # above this share of a device's memory: a warning, not a refusal
OVERHEAD_GIB = 2.0
FRAGMENTATION = 1.2
NF4_BYTES = 0.5 + 4 / 64
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

Method = Literal["full", "lora", "qlora", "inference"]


class Accelerator(BaseModel):
    """A node's accelerators, for the memory check: `accelerator:` in a cluster profile, or from instance_type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["gpu", "neuron"]
    name: str = Field(description="e.g. H100, A10G, Trainium")
    per_node: Annotated[int, Field(gt=0, description="GPUs, or NeuronCores, per node")]
    memory_gib: Annotated[float, Field(gt=0, description="memory of one GPU / one NeuronCore, GiB")]


def _acc(kind: Literal["gpu", "neuron"], name: str, per_node: int, memory_gib: float) -> Accelerator:
    return Accelerator(kind=kind, name=name, per_node=per_node, memory_gib=memory_gib)


# Device memory per instance type (AWS instance type pages: accelerator, count and memory). Trainium figures are
# per NeuronCore: trn1 has 16 Trainium chips of 32 GiB HBM with 2 NeuronCore-v2 each (32 cores x 16 GiB);
# trn2.48xlarge has 16 Trainium2 chips of 96 GiB, 64 logical NeuronCores (LNC=2) x 24 GiB.
INSTANCE_TYPES: dict[str, Accelerator] = {
    "p5.48xlarge": _acc("gpu", "H100", 8, 80),
    "p5e.48xlarge": _acc("gpu", "H200", 8, 141),
    "p5en.48xlarge": _acc("gpu", "H200", 8, 141),
    "p4d.24xlarge": _acc("gpu", "A100", 8, 40),
    "p4de.24xlarge": _acc("gpu", "A100", 8, 80),
    "g5.xlarge": _acc("gpu", "A10G", 1, 24),
    "g5.2xlarge": _acc("gpu", "A10G", 1, 24),
    "g5.12xlarge": _acc("gpu", "A10G", 4, 24),
    "g5.24xlarge": _acc("gpu", "A10G", 4, 24),
    "g5.48xlarge": _acc("gpu", "A10G", 8, 24),
    "g6e.12xlarge": _acc("gpu", "L40S", 4, 48),
    "g6e.48xlarge": _acc("gpu", "L40S", 8, 48),
    "trn1.2xlarge": _acc("neuron", "Trainium", 2, 16),
    "trn1.32xlarge": _acc("neuron", "Trainium", 32, 16),
    "trn1n.32xlarge": _acc("neuron", "Trainium", 32, 16),
    "trn2.48xlarge": _acc("neuron", "Trainium2", 64, 24),
    "trn2.3xlarge": _acc("neuron", "Trainium2", 4, 24),
}


@dataclass(frozen=True)
class Arch:
    """A Llama-style decoder's sizes: enough to split parameters into layers, embeddings and LoRA targets."""

    hidden: int
    layers: int
    vocab: int
    intermediate: int
    kv_dim: int  # num_key_value_heads * head_dim
    tied: bool = False

    @property
    def layer_params(self) -> int:
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q, o; k, v; gate, up, down; two norms

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params + self.hidden

    def lora_params(self, rank: int, targets: list[str]) -> int:
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        sizes = {"q_proj": (h, h), "o_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "gate_proj": (h, i),
                 "up_proj": (h, i), "down_proj": (i, h), "output_proj": (h, h)}
        return self.layers * sum(rank * sum(sizes.get(t, (h, h))) for t in targets)


# config.json of the Hub models the examples name (Meta-Llama-3-8B, -70B, Llama-3.1-405B), keyed by size.
KNOWN_SIZES: dict[str, Arch] = {
    "8b": Arch(4096, 32, 128256, 14336, 1024),
    "70b": Arch(8192, 80, 128256, 28672, 1024),
    "405b": Arch(16384, 126, 128256, 53248, 1024),
}
# The project's offline tiny model (stages/tiny.py): not worth a check, but a known size.
TINY = Arch(128, 2, 512, 256, 64, tied=True)


def arch_from_config(path: Path) -> Arch | None:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        return Arch(hidden, int(cfg["num_hidden_layers"]), int(cfg["vocab_size"]), int(cfg["intermediate_size"]),
                    int(cfg.get("num_key_value_heads") or heads) * head_dim, bool(cfg.get("tie_word_embeddings")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def arch_of(model: str, base: Path | None = None) -> Arch | None:
    """The model's sizes: its config.json if `model` is a local folder that has one, else a size named in the id
    ("Meta-Llama-3-70B" -> 70b); None when neither tells (then no check is possible)."""
    if model == "tiny":
        return TINY
    local = model.removeprefix("file://")
    if "://" not in local:
        folder = Path(local).expanduser()
        if not folder.is_absolute() and base is not None:
            folder = base / folder
        found = arch_from_config(folder / "config.json")
        if found is not None:
            return found
    match = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z0-9])", model)
    if match is None:
        return None
    size = f"{float(match.group(1)):g}b"
    return KNOWN_SIZES.get(size) or _generic(float(match.group(1)) * 1e9)


def _generic(params: float) -> Arch:
    """A Llama-3-like shape for an unlisted size: 12·L·h² ≈ params with L ≈ h/128, i = 3.5·h."""
    hidden = int(round((params * 128 / 12) ** (1 / 3) / 128) * 128) or 128
    return Arch(hidden, max(1, hidden // 128), 128256, int(hidden * 3.5), max(128, hidden // 8))


@dataclass(frozen=True)
class Workload:
    """One stage's use of one device (GPU or NeuronCore)."""

    stage: str
    arch: Arch
    dtype: str  # bf16 | fp32
    method: Method
    shards: int = 1  # FSDP world size, TP degree, or the devices device_map="auto" spreads the model over
    sharding: Literal["none", "fsdp", "tp", "split"] = "none"
    cpu_offload: bool = False
    lora_rank: int = 8
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    batch: int = 1  # sequences per device per micro-step
    seq: int = 2048
    checkpointing: bool = False
    what: str = ""  # how the stage runs, for the message ("FSDP over 16 GPUs")
    hint: str = ""  # what to change when it does not fit


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, float]  # GiB per term

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def estimate(w: Workload) -> Estimate:
    a, b = w.arch, DTYPE_BYTES[w.dtype]
    split = w.shards if w.sharding != "none" else 1
    embed = a.embedding_params + a.hidden
    if w.method == "qlora":
        weights = (a.layers * a.layer_params) * NF4_BYTES + embed * b
        layer_unit = a.layer_params * NF4_BYTES
    else:
        weights = a.params * b
        layer_unit = a.layer_params * b
    if w.method == "full":
        trainable, state_bytes = a.params, 4 * b  # weight, gradient, exp_avg, exp_avg_sq in the param dtype
    elif w.method in ("lora", "qlora"):
        trainable, state_bytes = a.lora_params(w.lora_rank, w.lora_targets), 16
    else:
        trainable, state_bytes = 0, 0
    # The weights term counts a full fine-tune's weights once: its training state adds the rest.
    state = trainable * (state_bytes - b if w.method == "full" else state_bytes)
    resident = 0.0 if w.cpu_offload else (weights + state) / split
    gathered = 0.0
    if w.sharding == "fsdp":
        gathered = 2 * layer_unit + embed * b  # current + prefetched layer, and the root unit
    transient = gathered + _activations(w) * FRAGMENTATION
    parts = {"weights+state": resident / GIB, "gathered": gathered / GIB,
             "activations": (transient - gathered) / GIB, "overhead": OVERHEAD_GIB}
    return Estimate(parts)


def _activations(w: Workload) -> float:
    a, b = w.arch, DTYPE_BYTES[w.dtype]
    tokens = w.batch * w.seq
    per_layer = tokens * (17 * a.hidden + 8 * a.intermediate) * b / 2
    if w.method == "inference":
        kv_cache = 2 * a.layers * tokens * a.kv_dim * b
        return (kv_cache + per_layer + tokens * a.vocab * (b + 4)) / (w.shards if w.sharding == "tp" else 1)
    if w.checkpointing:
        layers = a.layers * tokens * a.hidden * b + per_layer
    else:
        layers = a.layers * per_layer
    if w.sharding == "tp":  # Megatron TP splits attention heads and the MLP, not the layer inputs
        layers = layers / w.shards
    return layers + tokens * a.vocab * (b + 8)


@dataclass(frozen=True)
class Verdict:
    level: Literal["ok", "warn", "refuse"]
    message: str
    need_gib: float
    have_gib: float


def check(w: Workload, device: Accelerator) -> Verdict:
    est = estimate(w)
    need, have = est.total, device.memory_gib
    size = _size_name(w.arch)
    unit = "NeuronCore" if device.kind == "neuron" else f"{device.name} GPU"
    how = w.what or {"none": f"on one {have:g} GiB {unit}", "fsdp": f"FSDP over {w.shards} {unit}s",
                     "tp": f"tensor parallel over {w.shards} {unit}s",
                     "split": f"spread over {w.shards} {unit}s"}[w.sharding]
    offload = " + CPU offload" if w.cpu_offload else ""
    detail = ", ".join(f"{k} {v:.1f}" for k, v in est.parts.items() if v >= 0.05)
    text = (f"{w.stage}: {size} {w.dtype} {w.method} {how}{offload} needs ~{need:.0f} GiB per device "
            f"of {have:g} GiB ({detail})")
    if need > have:
        return Verdict("refuse", text, need, have)
    if need > WARN_FRACTION * have:
        return Verdict("warn", text + f": within {100 * (1 - WARN_FRACTION):.0f} % of the limit", need, have)
    return Verdict("ok", text, need, have)


def _size_name(a: Arch) -> str:
    n = a.params
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def with_device_count(w: Workload, count: int, sharding: Literal["none", "fsdp", "tp", "split"]) -> Workload:
    return replace(w, shards=max(1, count), sharding=sharding if count > 1 else "none")


def accelerator_of(accelerator: Accelerator | None, *instance_types: str | None) -> Accelerator | None:
    """The profile's explicit accelerator, else the first known instance type's (profile, then family setting)."""
    if accelerator is not None:
        return accelerator
    for name in instance_types:
        if name is not None and name in INSTANCE_TYPES:
            return INSTANCE_TYPES[name]
    return None
