"""Template families: for each stage kind, its template, its typed params and its declared outputs.

A family also owns a settings model shared by its stages (one parameter set for compile and train,
stages.md defect 7) and may add cross-stage checks.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from orchestrator import memfit, yamlsrc
from orchestrator.families.base import (
    COMMAND_KIND,
    Family,
    FitContext,
    Kind,
    NoParams,
    Params,
    family_of,
    kind_of,
    settings_of,
)
from orchestrator.spec import ClusterProfile, Pipeline, Stage
from orchestrator.yamlsrc import error_at, validation_error

__all__ = ["COMMAND_KIND", "Family", "FitContext", "Kind", "NoParams", "Params", "check_fit", "family_of", "kind_of",
           "registry", "settings_of", "validate"]


def registry() -> dict[str, Family]:
    from orchestrator.families import command, hf, neuron, nxd, torchtune

    return {f.name: f for f in (command.FAMILY, neuron.FAMILY, hf.FAMILY, torchtune.FAMILY, nxd.FAMILY)}


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
    # A stage may name another family (stage.family): that family's cross-stage checks run too, with its default
    # settings (settings_of: `settings:` belongs to the pipeline's own family).
    for name in dict.fromkeys(family_of(pipeline, s) for s in pipeline.stages):
        if name != pipeline.family:
            families[name].check(source, pipeline, settings_of(pipeline, families[name]))


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


def check_fit(source: yamlsrc.Located, pipeline: Pipeline, cluster: ClusterProfile) -> list[str]:
    """Estimate every GPU/Trainium stage's device memory against the cluster's accelerator: raise SpecError at a
    stage that cannot fit, return a warning for one close to the limit. Clusters that name no accelerator (and
    families whose settings name no instance type) are not checked."""
    from orchestrator.families import fit

    families = registry()
    warnings: list[str] = []
    for index, stage in enumerate(pipeline.stages):
        family = families[family_of(pipeline, stage)]
        kind = kind_of(family, stage.kind)
        accessor = family.memory or fit.ACCESSORS.get(family.name)
        if stage.kind == "command" or kind is None or accessor is None:
            continue
        settings = settings_of(pipeline, family)
        accelerator = memfit.accelerator_of(cluster.accelerator, cluster.instance_type,
                                            getattr(settings, "instance_type", None))
        if accelerator is None:
            continue
        ctx = FitContext(stage, settings, kind.params.model_validate(stage.params), stage.resources.over(cluster.defaults),
                         accelerator, source.path.resolve().parent)
        work = accessor(ctx)
        if work is None:
            continue
        verdict = memfit.check(work, accelerator)
        if verdict.level == "refuse":
            raise error_at(source, ("stages", index), verdict.message, work.hint or None)
        if verdict.level == "warn":
            warnings.append(f"{source.where(('stages', index))}: {verdict.message}")
    return warnings
