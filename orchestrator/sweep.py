"""Sweeps (issue 14 item 5): a `sweep:` block expands one pipeline into variants.

Each variant is the spec with some key paths set (`settings.learning_rate`, `stages.finetune.params.steps`). Every
variant is validated like the file itself. The plan renders every stage once per variant; a stage whose rendered
work (the cache's stage key, else its script, resources and outputs) is the same in every variant and whose parents
are all shared runs once, as today; every other stage becomes one stage per variant, named `<stage>@<variant>`,
working in `$WORKDIR/variants/<variant>` with the shared stages' outputs linked in. arrays.py submits the
per-variant stages of one base stage as one Slurm job array, chained per variant with `aftercorr`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from orchestrator import dag, yamlsrc
from orchestrator.checks import check
from orchestrator.errors import PipelineError, SpecError
from orchestrator.spec import Pipeline, Resources, Spec, Sweep
from orchestrator.yamlsrc import error_at, validation_error

if TYPE_CHECKING:
    from orchestrator.plan import Plan
    from orchestrator.state import RunState

SEP = "@"  # `finetune@v2`: never in a user's stage name (spec.NAME_RE), so a variant stage cannot collide
VARIANT_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
MAX_VARIANTS = 10_000
STAGE_PARTS = ("params", "resources", "env")


@dataclass(frozen=True)
class Variant:
    index: int
    name: str
    values: tuple[tuple[str, Any], ...]  # (key path as written, value), in the sweep's order
    locs: tuple[yamlsrc.KeyPath, ...]  # where each value is written in the file

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values) or "(the file as written)"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "values": dict(self.values)}


def stage_name(base: str, variant: str) -> str:
    return f"{base}{SEP}{variant}"


def split_name(name: str) -> tuple[str, str | None]:
    base, sep, variant = name.partition(SEP)
    return (base, variant) if sep else (name, None)


# One expansion per loaded spec: the loader's validate() and the plan (sweepplan.py) share it.
_EXPANDED: weakref.WeakKeyDictionary[Spec, list[tuple[Variant, Spec]]] = weakref.WeakKeyDictionary()


def validate(spec: Spec) -> list[str]:
    """Expand the sweep and check every variant as the file is checked (the plan, sweepplan.py, then refuses a sweep
    that changes an array stage's resources). Raises SpecError naming the sweep key and its line; returns the
    variants' warnings, once each."""
    warnings: list[str] = []
    variant_specs(spec, warnings)
    return list(dict.fromkeys(warnings))


def variant_specs(spec: Spec, warnings: list[str] | None = None) -> list[tuple[Variant, Spec]]:
    cached = _EXPANDED.get(spec)
    if cached is not None:
        return cached
    sweep = spec.pipeline.sweep
    assert sweep is not None
    variants = expand(spec.source, sweep)
    paths = {path: loc for v in variants for (path, _), loc in zip(v.values, v.locs)}
    resolved = {path: resolve_path(spec, loc, path) for path, loc in paths.items()}
    result = [(v, _variant_spec(spec, v, resolved, warnings if warnings is not None else [])) for v in variants]
    _EXPANDED[spec] = result
    return result


def expand(source: yamlsrc.Located, sweep: Sweep) -> list[Variant]:
    if (sweep.grid is None) == (sweep.variants is None):
        raise error_at(source, ("sweep",), "give exactly one of `grid:` (every combination) or `variants:` (a list)",
                       "e.g. sweep: {grid: {settings.learning_rate: [1.0e-4, 2.0e-4]}}")
    if sweep.grid is not None:
        return _grid(source, sweep.grid)
    assert sweep.variants is not None
    return _listed(source, sweep.variants)


def _grid(source: yamlsrc.Located, grid: dict[str, list[Any]]) -> list[Variant]:
    if not grid:
        raise error_at(source, ("sweep", "grid"), "the sweep is empty: name at least one key path with a list of values")
    for key, values in grid.items():
        if not values:
            raise error_at(source, ("sweep", "grid", key), f"the sweep over {key} has no values",
                           f"give a list of at least one value, e.g. {key}: [1, 2]")
    total = 1
    for values in grid.values():
        total *= len(values)
    _check_count(source, ("sweep", "grid"), total)
    keys = list(grid)
    variants = []
    for index, combo in enumerate(itertools.product(*(range(len(grid[k])) for k in keys))):
        chosen = tuple((k, grid[k][i]) for k, i in zip(keys, combo))
        locs = tuple(("sweep", "grid", k, i) for k, i in zip(keys, combo))
        variants.append(Variant(index, f"v{index}", chosen, locs))
    return variants


def _listed(source: yamlsrc.Located, items: list[dict[str, Any]]) -> list[Variant]:
    if not items:
        raise error_at(source, ("sweep", "variants"), "the sweep is empty: list at least one variant")
    _check_count(source, ("sweep", "variants"), len(items))
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        name = item.get("name", f"v{index}")
        loc: yamlsrc.KeyPath = ("sweep", "variants", index)
        if not isinstance(name, str) or not re.fullmatch(VARIANT_RE, name):
            raise error_at(source, loc + ("name",), f"variant name {name!r} is not letters, digits, '_', '.', '-' "
                           "(max 32, starting with a letter or digit)")
        if name in seen:
            raise error_at(source, loc + ("name",), f"duplicate variant name {name!r}", f"first at variants[{seen[name]}]")
        seen[name] = index
        values = tuple((k, v) for k, v in item.items() if k != "name")
        variants.append(Variant(index, name, values, tuple(loc + (k,) for k, _ in values)))
    return variants


def _check_count(source: yamlsrc.Located, loc: yamlsrc.KeyPath, total: int) -> None:
    if total > MAX_VARIANTS:
        raise error_at(source, loc, f"the sweep makes {total} variants; at most {MAX_VARIANTS} are allowed",
                       "sweep fewer values, or split the sweep into several runs")


def resolve_path(spec: Spec, loc: yamlsrc.KeyPath, path: str) -> yamlsrc.KeyPath:
    """`stages.finetune.params.lr` -> ('stages', 1, 'params', 'lr'): the place in the file's data. The key must
    exist in the file or be a field the model at that place knows (a default the file does not spell out)."""
    source = spec.source
    parts = path.split(".")
    where = f"sweep key {path!r}"
    if parts[0] == "settings" and len(parts) >= 2:
        target: yamlsrc.KeyPath = tuple(parts)
    elif parts[0] == "stages" and len(parts) >= 4 and parts[2] in STAGE_PARTS:
        names = [s.name for s in spec.pipeline.stages]
        if parts[1] not in names:
            raise error_at(source, loc, f"{where}: there is no stage {parts[1]!r}", f"stages: {', '.join(names)}")
        target = ("stages", names.index(parts[1]), *parts[2:])
    else:
        raise error_at(source, loc, f"{where} is not settings.<key>... or stages.<stage>.(params|resources|env).<key>...",
                       "e.g. settings.learning_rate or stages.finetune.params.steps")
    if not _exists(spec, target):
        raise error_at(source, loc, f"{where} does not exist: the file has no {yamlsrc.format_loc(target)} and "
                       "nothing there has such a setting", "check the spelling; `pipeline schema` lists every key")
    return target


def _exists(spec: Spec, target: yamlsrc.KeyPath) -> bool:
    data: Any = spec.source.data
    for depth, part in enumerate(target):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return _model_knows(spec, target[:depth], target[depth:])
    return True


def _model_knows(spec: Spec, present: yamlsrc.KeyPath, missing: yamlsrc.KeyPath) -> bool:
    """Whether a key the file leaves out is still a field of the model at that place (settings, typed params,
    resources); free-form mappings (command params, env) know only what the file says."""
    from orchestrator import families  # late: families import spec models

    full = present + missing
    model: type[BaseModel] | None
    if full[0] == "settings":
        family = families.registry().get(spec.pipeline.family)
        model, fields = (family.settings if family else None), full[1:]
    elif full[2] == "resources":
        model, fields = Resources, full[3:]
    elif full[2] == "params":
        stage = spec.pipeline.stages[int(full[1])]
        family = families.registry().get(families.family_of(spec.pipeline, stage))
        kind = families.kind_of(family, stage.kind) if family else None
        model = kind.params if kind is not None and stage.kind != "command" else None
        fields = full[3:]
    else:
        return False
    for part in fields:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return True


def _variant_spec(spec: Spec, variant: Variant, resolved: dict[str, yamlsrc.KeyPath], warnings: list[str]) -> Spec:
    data = copy.deepcopy(spec.source.data)
    data.pop("sweep", None)
    for (path, value), loc in zip(variant.values, variant.locs):
        _set(data, resolved[path], value)
    first = variant.locs[0] if variant.locs else ("sweep",)
    source = dataclasses.replace(spec.source, data=data)
    try:
        pipeline = Pipeline.model_validate(data)
        warnings += check(source, pipeline, spec.cluster)
    except ValidationError as exc:
        raise _in_variant(spec, variant, first, validation_error(source, exc)) from None
    except SpecError as exc:
        raise _in_variant(spec, variant, first, exc) from None
    return Spec(pipeline, spec.cluster, source)


def _in_variant(spec: Spec, variant: Variant, loc: yamlsrc.KeyPath, exc: SpecError) -> SpecError:
    return SpecError(f"{spec.source.where(loc)}: variant {variant.name} ({variant.label()}) is invalid:\n"
                     f"{exc.message}", exc.hint)


def _set(data: Any, target: yamlsrc.KeyPath, value: Any) -> None:
    for part in target[:-1]:
        if isinstance(data, dict):
            data = data.setdefault(part, {})
            if data is None:  # `settings:` written with nothing under it
                raise SpecError(f"cannot set {yamlsrc.format_loc(target)}: {part} is empty")
        else:
            data = data[part]
    data[target[-1]] = value


def variant_names(plan: Plan) -> list[str]:
    return [str(v["name"]) for v in plan.variants]


def stages_of_variant(plan: Plan, variant: str) -> list[str]:
    """Plan stages of one variant (by name or index); raises PipelineError naming the known ones."""
    names = variant_names(plan)
    if not names:
        raise PipelineError("this run has no sweep, so it has no variants", "name a stage with --stage instead")
    chosen = names[int(variant)] if variant.isdigit() and int(variant) < len(names) and variant not in names else variant
    if chosen not in names:
        raise PipelineError(f"no variant {variant!r}", f"variants: {', '.join(names)} (or their index 0-{len(names) - 1})")
    return [s.name for s in plan.stages if s.variant == chosen]


def select_rerun(state: RunState, plan: Plan, variant: str, stage: str | None, from_stage: str | None) -> set[str]:
    """`pipeline rerun --variant V [--stage S | --from S]`: S@V and what depends on it; from S@V on; or, with
    neither, V's stages that failed and their dependents, and all of V's stages when none failed."""
    mine = stages_of_variant(plan, variant)
    chosen = plan.stage(mine[0]).variant
    parents = plan.parents()
    named = stage or from_stage
    if named is not None:
        target = stage_name(named, chosen)
        if target not in mine:
            bases = [plan.stage(n).base for n in mine]
            shared = named in parents
            raise PipelineError(f"stage {named!r} " + ("is shared by every variant" if shared else "is not in this run"),
                                ("rerun it without --variant: " if shared else "") +
                                f"the stages of variant {chosen}: {', '.join(bases)}")
        if stage is not None:
            return dag.downstream(parents, [target])
        order = [n for n in dag.topological(parents) if n in mine]
        return set(order[order.index(target):])
    failed = [n for n in mine if not state.stages[n].state.ok and not state.stages[n].state.active]
    return dag.downstream(parents, failed) if failed else set(mine)
