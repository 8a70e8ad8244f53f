"""Trainium + neuronx-distributed (NxD) + PyTorch Lightning: tensor-parallel LoRA of seed 000 (stages.md 3).

Render-only here (no Trainium), but every value the reference scripts got wrong comes from one settings block:
- the converter's `--qkv_linear`/`--kv_size_multiplier` and the trainer's `--qkv_linear`/`--kv_replicator` are the
  same two fields, `--hw_backend` is always passed and the shard count is checked (defect 11);
- `type=bool` converter flags are emitted only when true (defect 10);
- the four NxD LoRA save fields are all rendered from one `adapter_save_mode`, and the combination in which
  `merge_sharded_lora=True` silently cancels `save_lora_base`/`merge_lora` is refused at validation (defect 12);
- the NxD adapter is converted into a PEFT adapter by `python -m stages nxd-adapter` (defect 13);
- the LoRA fields, trainer flags, pins and adapter layout are checked in tests against the facts of
  neuronx-distributed 2.28 (tag v2.28.0) kept in tests/fixtures/neuronx_distributed_2_28.json, each with its
  upstream file (issue 9: no `enable_lora` field, `--use_gpu_compatible_precision 0`, tensorboard, TP shards);
- `prepare_data` holds an eval split out of the trainer's data and `evaluate` gives the base-vs-tuned verdict.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from orchestrator import yamlsrc
from orchestrator.families import common, nxd_checks
from orchestrator.families.base import Family, Kind
from orchestrator.families.base import Params as Strict
from orchestrator.spec import Pipeline

# NeuronCores per node (one torchrun worker each) and the converter's --hw_backend, per instance type.
INSTANCES: dict[str, tuple[int, str]] = {
    "trn1.32xlarge": (32, "trn1"),
    "trn1n.32xlarge": (32, "trn1"),
    "trn2.48xlarge": (64, "trn2"),
}

# One pinned stack (Neuron SDK 2.28 wheels, stages.md 2.2, plus the tutorial's pins of stages.md 3.1); defect 20.
# torch-neuronx goes first so that pip never resolves a CUDA torch for the later packages. The rest is NxD 2.28's
# examples/training/llama/requirements.txt + requirements_ptl.txt (tensorboard included: the trainer's
# NeuronTensorBoardLogger is Lightning's TensorBoardLogger, which raises without it), peft for the merge stage
# and what convert/prepare_data use.
PINS: dict[str, Any] = {
    "python": "python3.10",
    "first": common.NEURON_SDK_2_28,
    "then": [common.NXD_SDK_2_28, "transformers==4.48.0", "datasets<=3.6.0", "lightning==2.4.0",
             "pytorch-lightning==2.4.0", "tensorboard", "regex", "sentencepiece", "tenacity", "s3transfer",
             "awscrt", "peft==0.14.0", "blobfile", "tiktoken", "nltk", "safetensors", "huggingface_hub<1.0"],
}

# The four NxD LoraConfig save fields per mode (stages.md 3.4). merge_sharded_lora is False in every mode: in NxD
# 2.28 (src/neuronx_distributed/modules/lora/model.py, state_dict / merge_sharded_lora_weights) it forces
# save_lora_base/merge_lora to False, and for the GQA qkv_proj it cuts every gathered lora_B, weight_q included, to
# its first 1/kv_size_multiplier rows: q would lose 3/4 of its rows at kv_replicator 4. Each TP rank's shard is
# saved instead and `nxd-adapter export` gathers them (stages/nxd_adapter.py).
SAVE_MODES: dict[str, dict[str, bool]] = {
    "adapter": {"save_lora_base": False, "merge_lora": False, "merge_sharded_lora": False,
                "save_lora_config_adapter": False},
    "base_and_lora": {"save_lora_base": True, "merge_lora": False, "merge_sharded_lora": False,
                      "save_lora_config_adapter": False},
    "merged": {"save_lora_base": True, "merge_lora": True, "merge_sharded_lora": False,
               "save_lora_config_adapter": False},
}
PACKED_LEN = 2048  # the NxD PTL data module packs into 2048-token chunks whatever --seq_len says (defect 19)


class NxdLora(common.Lora):
    alpha: common.Positive = 32
    target_modules: common.Modules | None = Field(
        None, description="default: qkv_proj when the attention projections are fused, else q_proj,v_proj,k_proj")


class NxdSettings(Strict):
    model_id: str = "meta-llama/Meta-Llama-3-8B"
    instance_type: Literal["trn1.32xlarge", "trn1n.32xlarge", "trn2.48xlarge"] = "trn1.32xlarge"
    nxd_examples_dir: str = Field("/fsx/ubuntu/neuronx-distributed/examples/training/llama",
                                  description="NxD's examples/training/llama: convert_checkpoints.py, lightning/, ...")
    model_config_path: str | None = Field(
        None, description="NxD model config.json; default <nxd_examples_dir>/tp_zero1_llama_hf_pretrain/"
                          "8B_config_llama3/config.json")
    pretrained_ckpt: str | None = Field(None, description="an already converted NxD checkpoint (parent of "
                                                          "pretrained_weight/); then the pipeline needs no convert")
    tensor_parallel_size: Annotated[int, Field(gt=0)] = 32
    pipeline_parallel_size: Literal[1] = Field(1, description="the PTL LoRA trainer has no pipeline parallelism")
    num_kv_heads: Annotated[int, Field(gt=0)] = 8
    qkv_linear: bool = True
    kv_replicator: Annotated[int, Field(gt=0)] = 4
    fuse_qkv: bool = False
    lora: NxdLora = Field(default_factory=NxdLora)
    adapter_save_mode: Literal["adapter", "base_and_lora", "merged"] = "adapter"
    merge_sharded_lora: bool | None = Field(None, description="override; True only makes sense in `adapter` mode "
                                                         "and is refused with qkv_linear and kv_replicator > 1")
    seq_len: Annotated[int, Field(gt=0)] = PACKED_LEN
    micro_batch_size: Annotated[int, Field(gt=0)] = 1
    global_batch_size: Annotated[int, Field(gt=0)] = 1
    learning_rate: Annotated[float, Field(gt=0)] = 5e-4
    warmup_steps: Annotated[int, Field(ge=0)] = 5
    max_steps: Annotated[int, Field(gt=0)] = 20
    seed: int = 12349
    use_mix_precision: bool = False
    data_dir: str = Field("databricks/databricks-dolly-15k", description="a Hub dataset id, s3:// or a path; read by "
                          "prepare_data when the pipeline has that stage, else handed to the trainer as is")
    task: str = "open_qa"
    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.05, description="share of the task's rows prepare_data keeps out of training for the evaluate stage")
    split_seed: int = 42
    rdzv_port: Annotated[int, Field(gt=1023, lt=65536)] = 44000
    root_comm_port: Annotated[int, Field(gt=1023, lt=65536)] = 48620
    inflight_requests: Annotated[int, Field(gt=0)] = 3
    malloc_arena_max: Annotated[int, Field(gt=0)] = 64

    @model_validator(mode="after")
    def _consistent(self) -> NxdSettings:
        tp = self.tensor_parallel_size
        if self.cores_per_node % tp:
            raise ValueError(f"tensor_parallel_size {tp} does not divide the {self.cores_per_node} NeuronCores "
                             f"of a {self.instance_type}")
        if self.qkv_linear and self.num_kv_heads * self.kv_replicator != tp:
            raise ValueError(f"with qkv_linear, num_kv_heads x kv_replicator must equal tensor_parallel_size: "
                             f"{self.num_kv_heads} x {self.kv_replicator} != {tp} (use kv_replicator "
                             f"{max(1, tp // self.num_kv_heads)})")
        if not self.qkv_linear and self.kv_replicator != 1:
            raise ValueError("kv_replicator only applies with qkv_linear: true; set it to 1")
        if not self.config_json.endswith("/config.json"):
            raise ValueError(f"model_config_path {self.config_json!r} must name a config.json: the trainer's "
                             "--model_path is its folder")
        if self.seq_len != PACKED_LEN:
            raise ValueError(f"seq_len {self.seq_len}: the NxD Lightning data module packs every sample into "
                             f"{PACKED_LEN}-token chunks whatever --seq_len says, so seq_len must be {PACKED_LEN}")
        fused = {"qkv_proj"}
        split = {"q_proj", "k_proj", "v_proj"}
        wrong = set(self.target_modules) & (split if self.fused_attention else fused)
        if wrong:
            raise ValueError(f"lora.target_modules {sorted(wrong)} do not exist in the NxD model when the attention "
                             f"projections are {'fused (qkv_proj)' if self.fused_attention else 'separate'}")
        if self.merge_sharded_lora and self.adapter_save_mode != "adapter":
            raise ValueError(f"merge_sharded_lora: true silently forces save_lora_base and merge_lora to false, "
                             f"which contradicts adapter_save_mode {self.adapter_save_mode!r}")
        if self.merge_sharded_lora and self.qkv_linear and self.kv_replicator > 1:
            raise ValueError(f"merge_sharded_lora: true with qkv_linear and kv_replicator {self.kv_replicator}: NxD "
                             f"2.28 cuts the gathered qkv_proj lora_B (q rows included) to 1/{self.kv_replicator}, "
                             "so the saved q LoRA is truncated; leave merge_sharded_lora unset (export gathers "
                             "the TP shards)")
        return self

    @property
    def cores_per_node(self) -> int:
        return INSTANCES[self.instance_type][0]

    @property
    def hw_backend(self) -> str:
        return INSTANCES[self.instance_type][1]

    @property
    def tp(self) -> int:
        return self.tensor_parallel_size

    @property
    def pp(self) -> int:
        return self.pipeline_parallel_size

    @property
    def kv_size_multiplier(self) -> int:
        """The converter's name for the trainer's --kv_replicator: one field feeds both (defect 11)."""
        return self.kv_replicator

    @property
    def fused_attention(self) -> bool:
        return self.qkv_linear or self.fuse_qkv

    @property
    def target_modules(self) -> list[str]:
        if self.lora.target_modules is not None:
            return list(self.lora.target_modules)
        return ["qkv_proj"] if self.fused_attention else ["q_proj", "v_proj", "k_proj"]

    @property
    def save_fields(self) -> dict[str, bool]:
        fields = dict(SAVE_MODES[self.adapter_save_mode])
        if self.merge_sharded_lora is not None:
            fields["merge_sharded_lora"] = self.merge_sharded_lora
        return fields

    @property
    def lora_config(self) -> dict[str, Any]:
        """Every NxD LoraConfig field the trainer gets, rendered explicitly (its own are hard-coded). Only fields of
        the 2.28 dataclass (src/neuronx_distributed/modules/lora/config.py): `enable_lora` went in 2.21, and an
        unknown keyword is a TypeError; LoRA itself is switched on by the trainer's --enable_lora flag."""
        return {"lora_rank": self.lora.r, "lora_alpha": self.lora.alpha,
                "lora_dropout": self.lora.dropout, "bias": "none", "lora_verbose": True,
                "target_modules": self.target_modules, "lora_save_dir": "lora_adapter", **self.save_fields}

    @property
    def data_source(self) -> str:
        """What `stages fetch-data` reads: a Hub id becomes hf://datasets/<id>."""
        local = self.data_dir.startswith(("/", ".", "~", "s3://", "hf://"))
        return self.data_dir if local else f"hf://datasets/{self.data_dir}"

    @property
    def model_slug(self) -> str:
        return common.model_slug(self.model_id)

    @property
    def config_json(self) -> str:
        return self.model_config_path or f"{self.nxd_examples_dir}/tp_zero1_llama_hf_pretrain/8B_config_llama3/config.json"

    @property
    def converted_dir(self) -> str:
        """Relative to the workdir; named by everything that shapes the shards, so a change never reuses old ones."""
        qkv = f"-qkvlinear-kv{self.kv_size_multiplier}" if self.qkv_linear else ""
        return f"nxd_checkpoints/{self.model_slug}-tp{self.tp}-pp{self.pp}{qkv}{'-fused' if self.fuse_qkv else ''}"

    def data_parallel(self, nodes: int) -> int:
        return nodes * self.cores_per_node // (self.tp * self.pp)

    def grad_accum(self, nodes: int) -> int:
        return max(1, self.global_batch_size // (self.micro_batch_size * self.data_parallel(nodes)))


def _check(source: yamlsrc.Located, pipeline: Pipeline, settings: Any) -> None:
    assert isinstance(settings, NxdSettings)  # settings_of validated the pipeline's settings with this family's model
    nxd_checks.check(source, pipeline, settings)


def _context(settings: Any) -> dict[str, Any]:
    assert isinstance(settings, NxdSettings)
    return {"pins": PINS, "neuron_index": common.NEURON_INDEX}


FAMILY = Family(
    name="nxd",
    settings=NxdSettings,
    kinds={
        "create_env": Kind("nxd/create_env.sh.j2"),
        "download": Kind("nxd/download.sh.j2", common.DownloadParams, common.model_outputs),
        "prepare_data": Kind("nxd/prepare_data.sh.j2", outputs=lambda s, p: [
            "data/task_rows.jsonl", "data/nxd_train/dataset_dict.json"]),
        "convert": Kind("nxd/convert.sh.j2", outputs=lambda s, p: [f"{s.converted_dir}/pretrained_weight/model"]),
        "finetune": Kind("nxd/finetune.sh.j2", outputs=lambda s, p: ["nxd_finetune/lora_adapter/lora/done"]),
        "export_adapter": Kind("nxd/export_adapter.sh.j2", outputs=lambda s, p: [
            "adapter_peft/adapter_config.json", "adapter_peft/adapter_model.safetensors"]),
        "merge": Kind("nxd/merge.sh.j2", outputs=lambda s, p: ["final_model_output/config.json"]),
        "evaluate": Kind("nxd/evaluate.sh.j2", common.EvaluateParams, lambda s, p: ["reports/evaluate.json"]),
        "inference": Kind("nxd/inference.sh.j2", common.InferenceParams, lambda s, p: ["reports/inference.json"],
                          cache=False),
    },
    check=_check,
    context=_context,
)
