"""Trainium + optimum-neuron: the chain of seed 001 (stages.md section 2), defects fixed, plus an evaluate verdict.

One `settings` block drives both neuron_parallel_compile and finetune, so the compiled graphs match the
training graphs (stages.md defect 7: any difference in nodes, TP, batch, GA or sequence length recompiles).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from orchestrator import yamlsrc
from orchestrator.families.base import Family, Kind, family_of
from orchestrator.families.base import Params as Strict
from orchestrator.families.common import (
    NEURON_INDEX,
    NEURON_SDK_2_28,
    NXD_SDK_2_28,
    DownloadParams,
    EvaluateParams,
    InferenceParams,
    Lora,
    Modules,
    Positive,
    model_outputs,
    model_slug,
    require_venv,
)
from orchestrator.spec import Pipeline
from orchestrator.yamlsrc import error_at

# (NeuronCores per node, tensor parallel size) per instance type (stages.md 2.3, Gen 2 launcher table).
INSTANCES: dict[str, tuple[int, int]] = {
    "trn1.32xlarge": (32, 8),
    "trn1n.32xlarge": (32, 8),
    "trn2.48xlarge": (64, 4),
    "trn2.3xlarge": (4, 4),
}

# Pinned per SDK generation (stages.md 2.2; defect 20: pin per backend and record it per run).
PINS: dict[str, dict[str, Any]] = {
    "gen1": {
        "python": "python3.9",
        "python_install": "sudo apt-get install -y python3.9-venv",
        "system_site_packages": True,
        "first": ["torch-neuronx==2.1.2.2.4.0", "neuronx-cc==2.16.372.0"],
        "then": ["neuronx-distributed==0.10.1", "neuronx-distributed-training==1.1.1", "optimum-neuron==0.1.0",
                 "transformers==4.48.3", "trl==0.11.4", "peft==0.14.0", "datasets==2.18.0"],
    },
    "gen2": {
        # optimum-neuron 0.4.5 needs Python >=3.10,<3.12; the SDK 2.28 DLAMI is Ubuntu 24.04 (Python 3.12), so
        # Gen 2 upstream (awslabs/awsome-distributed-training bce7ca54, submit_jobs/0.create_env.sh) installs 3.10
        # from the deadsnakes PPA on every node.
        "python": "python3.10",
        "python_install": "sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update && "
                          "sudo apt-get install -y python3.10 python3.10-venv python3.10-dev",
        "system_site_packages": False,
        # torch-neuronx first (with torchvision, as upstream), so pip does not pull a CUDA torch later.
        "first": [*NEURON_SDK_2_28, "torchvision==0.23.0"],
        # The versions optimum-neuron[training]==0.4.5 requires (its METADATA: transformers~=4.57.1,
        # trl==0.24.0, peft==0.17.0), pinned exactly so every gen2 env resolves the same stack.
        "then": [NXD_SDK_2_28, "optimum-neuron[training]==0.4.5", "transformers==4.57.1",
                 "trl==0.24.0", "peft==0.17.0"],
    },
}


class NeuronLora(Lora):
    target_modules: Modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class NeuronSettings(Strict):
    sdk: Literal["gen1", "gen2"] = "gen2"
    model_id: str = "meta-llama/Meta-Llama-3-8B-Instruct"
    model_source: str | None = Field(None, description="hf://id, s3://bucket/prefix or a path; default hf://<model_id>")
    dataset: str = Field("databricks/databricks-dolly-15k",
                         description="Dolly-format rows: a Hub dataset id, hf://datasets/<id>, s3://... or a path; "
                                     "fetched and validated into data/dataset.jsonl by the download stage")
    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.01  # held out from training for the evaluate stage
    seed: int = 42
    instance_type: Literal["trn1.32xlarge", "trn1n.32xlarge", "trn2.48xlarge", "trn2.3xlarge"] = "trn1.32xlarge"
    procs_per_node: Annotated[int, Field(gt=0)] | None = None
    tensor_parallel_size: Annotated[int, Field(gt=0)] | None = None
    max_seq_length: Annotated[int, Field(gt=0)] = 2048
    packing: bool = True
    per_device_train_batch_size: Annotated[int, Field(gt=0)] = 1
    gradient_accumulation_steps: Annotated[int, Field(gt=0)] = 3
    learning_rate: Annotated[float, Field(gt=0)] = 2e-5
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    num_train_epochs: Annotated[int, Field(gt=0)] = 1
    max_steps: int = -1
    bf16: bool = True
    save_steps: Annotated[int, Field(gt=0)] = 400
    logging_steps: Annotated[int, Field(gt=0)] = 1
    lora: NeuronLora = Field(default_factory=NeuronLora)
    compile_steps: Annotated[int, Field(gt=0, le=100)] = 10
    rdzv_port: Annotated[int, Field(gt=1023, lt=65536)] = 29400
    system_prompt: str = "You are a helpful assistant."
    inflight_requests: Annotated[int, Field(gt=0)] = 5
    malloc_arena_max: Annotated[int, Field(gt=0)] = 70

    @model_validator(mode="after")
    def _parallelism(self) -> NeuronSettings:
        if self.procs % self.tp:
            raise ValueError(f"procs_per_node {self.procs} is not a multiple of tensor_parallel_size {self.tp}")
        return self

    @property
    def procs(self) -> int:
        return self.procs_per_node or INSTANCES[self.instance_type][0]

    @property
    def tp(self) -> int:
        return self.tensor_parallel_size or INSTANCES[self.instance_type][1]

    @property
    def data_source(self) -> str:
        """What fetch-data reads: a bare Hub id (as upstream passes it to load_dataset) becomes hf://datasets/."""
        if "://" in self.dataset or self.dataset.startswith("/"):
            return self.dataset
        return f"hf://datasets/{self.dataset}"

    @property
    def model_slug(self) -> str:
        return model_slug(self.model_id)


class NeuronInferenceParams(InferenceParams):
    system_prompt: str | None = "You are a pirate chatbot who always responds in pirate speak!"
    max_new_tokens: Positive = 256
    temperature: Annotated[float, Field(ge=0)] = 0.6
    top_p: Annotated[float, Field(gt=0, le=1)] | None = 0.9


def compile_cache_key(settings: NeuronSettings, nodes: int) -> str:
    """Everything that changes the compiled graphs, hashed (aws-neuron-sdk: only the step count may differ)."""
    graph = settings.model_dump(include={"sdk", "model_id", "max_seq_length", "packing", "per_device_train_batch_size",
                                         "gradient_accumulation_steps", "bf16", "lora"})
    graph.update(nodes=nodes, procs=settings.procs, tp=settings.tp)
    digest = hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()[:10]
    return f"{settings.model_slug}-{digest}"


def _check(source: yamlsrc.Located, pipeline: Pipeline, settings: Any) -> None:
    """compile and finetune must use the same node count, or the compiled cache is useless (defect 7)."""
    nodes = {s.kind: (i, s.resources.nodes or 1) for i, s in enumerate(pipeline.stages)
             if s.kind in ("compile", "finetune") and family_of(pipeline, s) == "neuron"}
    if "compile" in nodes and "finetune" in nodes and nodes["compile"][1] != nodes["finetune"][1]:
        index = nodes["compile"][0]
        raise error_at(source, ("stages", index, "resources", "nodes"),
                       f"compile runs on {nodes['compile'][1]} node(s) but finetune on {nodes['finetune'][1]}",
                       "use the same node count: Neuron graphs depend on the world size")
    require_venv(source, pipeline, "neuron", "/fsx/ubuntu/peft_ft/env_llama3_8B_peft")


def _context(settings: Any) -> dict[str, Any]:
    assert isinstance(settings, NeuronSettings)
    return {"pins": PINS[settings.sdk], "neuron_index": NEURON_INDEX, "compile_key": compile_cache_key}


FAMILY = Family(
    name="neuron",
    settings=NeuronSettings,
    kinds={
        "create_env": Kind("neuron/create_env.sh.j2"),
        "download": Kind("neuron/download.sh.j2", DownloadParams,
                         lambda s, p: [*model_outputs(s, p), "data/dataset.jsonl"]),
        "compile": Kind("neuron/compile.sh.j2"),
        "finetune": Kind("neuron/finetune.sh.j2", outputs=lambda s, p: ["model_checkpoints"]),
        "consolidate": Kind("neuron/consolidate.sh.j2",
                            outputs=lambda s, p: ["adapter_consolidated/adapter_model.safetensors"]),
        "merge": Kind("neuron/merge.sh.j2", outputs=lambda s, p: ["final_model_output/config.json"]),
        "evaluate": Kind("neuron/evaluate.sh.j2", EvaluateParams, lambda s, p: ["reports/evaluate.json"]),
        "inference": Kind("neuron/inference.sh.j2", NeuronInferenceParams, lambda s, p: ["reports/inference.json"],
                          cache=False),
    },
    check=_check,
    context=_context,
)
