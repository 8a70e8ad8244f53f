"""Template families: for each stage kind, its template, its typed params and its declared outputs.

A family also owns a settings model shared by its stages (one parameter set for compile and train,
stages.md defect 7) and may add cross-stage checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator import yamlsrc
from orchestrator.spec import Pipeline, Stage, error_at, validation_error


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


@dataclass(frozen=True)
class Family:
    name: str
    settings: type[BaseModel]
    kinds: Mapping[str, Kind]
    check: Callable[[yamlsrc.Located, Pipeline, Any], None] = field(default=lambda source, pipeline, settings: None)
    context: Callable[[Any], dict[str, Any]] = field(default=lambda settings: {})


COMMAND_KIND = Kind(template="command/command.sh.j2")


def registry() -> dict[str, Family]:
    from orchestrator.families import command, hf, neuron, nxd, torchtune

    return {f.name: f for f in (command.FAMILY, neuron.FAMILY, hf.FAMILY, torchtune.FAMILY, nxd.FAMILY)}


def family_of(pipeline: Pipeline, stage: Stage) -> str:
    return stage.family or pipeline.family


def kind_of(family: Family, kind: str) -> Kind | None:
    return COMMAND_KIND if kind == "command" else family.kinds.get(kind)


def settings_of(pipeline: Pipeline, family: Family) -> BaseModel:
    data = pipeline.settings if family.name == pipeline.family else {}
    return family.settings.model_validate(data)


def validate(source: yamlsrc.Located, pipeline: Pipeline) -> None:
    """Check every stage's family, kind and params, and the pipeline's settings; raise SpecError at the key."""
    families = registry()
    if pipeline.family not in families:
        raise error_at(source, ("family",), f"unknown family {pipeline.family!r}",
                       f"known families: {', '.join(families)}")
    try:
        settings = settings_of(pipeline, families[pipeline.family])
    except ValidationError as exc:
        raise validation_error(source, exc, ("settings",)) from None
    for index, stage in enumerate(pipeline.stages):
        _validate_stage(source, pipeline, index, stage, families)
    families[pipeline.family].check(source, pipeline, settings)


def _validate_stage(source: yamlsrc.Located, pipeline: Pipeline, index: int, stage: Stage,
                    families: dict[str, Family]) -> None:
    name = family_of(pipeline, stage)
    if name not in families:
        raise error_at(source, ("stages", index, "family"), f"unknown family {name!r}",
                       f"known families: {', '.join(families)}")
    family = families[name]
    kind = kind_of(family, stage.kind)
    if kind is None:
        raise error_at(source, ("stages", index, "kind"), f"family {name!r} has no stage kind {stage.kind!r}",
                       f"kinds: command, {', '.join(family.kinds)}")
    if stage.kind == "command" and not (stage.run or "").strip():
        raise error_at(source, ("stages", index), "a `command` stage needs a `run:` body")
    if stage.kind != "command" and stage.run is not None:
        raise error_at(source, ("stages", index, "run"), f"`run:` is only for kind `command`, not {stage.kind!r}")
    if stage.kind == "command":
        for key in stage.params:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                # command params become PARAM_<KEY> variables, so a key must be a shell identifier
                raise error_at(source, ("stages", index, "params", key), f"{key!r} is not a valid variable name")
        return
    try:
        kind.params.model_validate(stage.params)
    except ValidationError as exc:
        raise validation_error(source, exc, ("stages", index, "params")) from None
