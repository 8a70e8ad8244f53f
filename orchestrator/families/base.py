"""What a family is made of (the types every family module builds on): typed params, stage kinds (template,
params, declared outputs), the family itself, and what its memory accessor reads. orchestrator/families/
__init__.py holds the registry and the checks that run them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator import memfit, yamlsrc
from orchestrator.spec import Pipeline, Resources, Stage


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    pass


@dataclass(frozen=True)
class Kind:
    template: str
    params: type[Params] = NoParams
    # Paths (relative to the workdir) the stage must leave behind; checked by the job wrapper.
    outputs: Callable[[Any, Any], list[str]] = lambda settings, params: []
    # False: a stage of this kind is never reused from an earlier run (issue 14: e.g. inference samples, which
    # people rerun to look at the model again, and which cost seconds).
    cache: bool = True


@dataclass(frozen=True)
class Family:
    name: str
    settings: type[BaseModel]
    kinds: Mapping[str, Kind]
    check: Callable[[yamlsrc.Located, Pipeline, Any], None] = field(default=lambda source, pipeline, settings: None)
    context: Callable[[Any], dict[str, Any]] = field(default=lambda settings: {})
    # What a stage asks of one GPU/NeuronCore (orchestrator/memfit.py), or None for a stage that uses none.
    memory: Callable[[FitContext], memfit.Workload | None] | None = None


@dataclass(frozen=True)
class FitContext:
    """What a family's memory accessor reads: the stage, its validated settings and params, its resources with
    the cluster's defaults filled in, the node's accelerator and the spec's folder (for local model paths)."""

    stage: Stage
    settings: Any
    params: Any
    resources: Resources
    accelerator: memfit.Accelerator
    spec_dir: Path


COMMAND_KIND = Kind(template="command/command.sh.j2")


def family_of(pipeline: Pipeline, stage: Stage) -> str:
    return stage.family or pipeline.family


def kind_of(family: Family, kind: str) -> Kind | None:
    return COMMAND_KIND if kind == "command" else family.kinds.get(kind)


def settings_of(pipeline: Pipeline, family: Family) -> BaseModel:
    data = pipeline.settings if family.name == pipeline.family else {}
    return family.settings.model_validate(data)
