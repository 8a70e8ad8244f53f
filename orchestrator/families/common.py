"""Pieces several families share, written once: the LoRA and inference parameter models (a family sets only its
own defaults), the evaluate verdict's params, and what the two Trainium families (neuron, nxd) have in common:
the Neuron SDK 2.28 wheels and index, the model slug, the model download and the `venv:` requirement."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from orchestrator import yamlsrc
from orchestrator.families.base import Params, family_of
from orchestrator.spec import Pipeline
from orchestrator.yamlsrc import error_at

Positive = Annotated[int, Field(gt=0)]
Dropout = Annotated[float, Field(ge=0, lt=1)]
Modules = Annotated[list[str], Field(min_length=1)]

# The Neuron SDK 2.28 compiler and torch wheels (stages.md 2.2), from AWS's index: both Trainium families install
# them in a pip run of their own before anything else (templates/_env.sh.j2 neuron_pip).
NEURON_INDEX = "https://pip.repos.neuron.amazonaws.com"
NEURON_SDK_2_28 = ["torch-neuronx==2.8.0.2.12.22436", "neuronx-cc==2.23.6484.0"]
NXD_SDK_2_28 = "neuronx-distributed==0.17.26814"  # the NxD wheel of the same SDK release


class Lora(Params):
    """A LoRA adapter's rank, alpha and dropout (peft's LoraConfig r/lora_alpha/lora_dropout, NxD's lora_rank/...).
    A family subclasses it to set its defaults and its `target_modules` (module names differ per model)."""

    r: Positive = 16
    alpha: Positive = 16
    dropout: Dropout = 0.05


class EvaluateParams(Params):
    max_loss_ratio: Annotated[float, Field(gt=0)] = 1.0  # tuned held-out loss must be below base x this


class InferenceParams(Params):
    """What `python -m stages inference` takes; a family subclasses it to set its defaults. None: the flag is not
    passed (system_prompt: the training system prompt; top_p: no nucleus sampling)."""

    prompts: list[str] = ["Who are you?"]
    system_prompt: str | None = None
    max_new_tokens: Positive = 128
    temperature: Annotated[float, Field(ge=0)] = 0.0
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None


class DownloadParams(Params):
    allow_patterns: list[str] = ["*.json", "*.safetensors", "tokenizer*"]


def model_slug(model_id: str) -> str:
    """The folder name under model_artifacts/: the repo name of a Hub id."""
    return model_id.rstrip("/").split("/")[-1]


def model_outputs(settings: Any, params: Any) -> list[str]:
    """What a Neuron family's download leaves (templates/neuron/_steps.sh.j2 download_model)."""
    return [f"model_artifacts/{settings.model_slug}/config.json", f"model_artifacts/{settings.model_slug}/manifest.json"]


def require_venv(source: yamlsrc.Located, pipeline: Pipeline, family: str, example: str) -> None:
    """A Trainium family's stages all activate `venv:`, which its create_env builds."""
    if pipeline.venv is None and any(family_of(pipeline, s) == family for s in pipeline.stages):
        raise error_at(source, (), f"the {family} family needs `venv:` (the environment every stage activates)",
                       f"e.g. venv: {example}")
