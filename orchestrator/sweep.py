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
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from orchestrator import dag, yamlsrc
from orchestrator.checks import check
from orchestrator.errors import PipelineError, SpecError
from orchestrator.spec import Pipeline, Resources, Spec, Sweep
from orchestrator.yamlsrc import error_at, validation_error

if TYPE_CHECKING:
    from orchestrator.plan import Plan, StagePlan
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


# One expansion and one plan per loaded spec: validate() builds the plan to check it, submit/render reuse it.
_EXPANDED: weakref.WeakKeyDictionary[Spec, list[tuple[Variant, Spec]]] = weakref.WeakKeyDictionary()
_PLANS: weakref.WeakKeyDictionary[Spec, Plan] = weakref.WeakKeyDictionary()


def validate(spec: Spec) -> list[str]:
    """Expand the sweep and check every variant as the file is checked, then the plan (arrays need equal
    resources). Raises SpecError naming the sweep key and its line; returns the variants' warnings, once each."""
    warnings: list[str] = []
    variant_specs(spec, warnings)
    build_plan(spec)
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


# ---------------------------------------------------------------------------------------------------------- plan


def build_plan(spec: Spec) -> Plan:
    """The expanded plan: shared stages once, the others once per variant (see the module docstring)."""
    cached = _PLANS.get(spec)
    if cached is None:
        cached = _PLANS[spec] = _build_plan(spec)
    return cached


def _build_plan(spec: Spec) -> Plan:
    from orchestrator import plan as planlib  # late: plan.build calls this for a spec with a sweep

    variants = variant_specs(spec)
    first = [planlib.build(s) for _, s in variants]
    order = [s.name for s in first[0].stages]
    shared: set[str] = set()
    for name in order:
        same = all(_work(p.stage(name)) == _work(first[0].stage(name)) for p in first)
        if same and all(parent in shared for parent in first[0].stage(name).after):
            shared.add(name)
    per_variant = [n for n in order if n not in shared]
    _check_resources(spec, variants, first, per_variant)
    links = _links(first[0], shared)
    stages: list[StagePlan] = [first[0].stage(n) for n in order if n in shared]
    for variant, variant_spec in variants:
        context = {n: {"name": variant.name, "index": variant.index, "links": links[n]} for n in per_variant}
        rendered = planlib.build(variant_spec, context)
        stages += [_as_variant(rendered.stage(n), variant.name, shared) for n in per_variant]
    by_name = {s.name: s for s in stages}
    topo = dag.topological({s.name: list(s.after) for s in stages})
    sweep = spec.pipeline.sweep
    assert sweep is not None
    return dataclasses.replace(first[0], stages=tuple(by_name[n] for n in topo),
                               variants=tuple(v.to_json() for v, _ in variants), throttle=sweep.throttle)


def _work(stage: StagePlan) -> tuple[Any, ...]:
    """What makes two renderings of a stage the same work: the cache's stage key when the plan has one (issue 14
    item 1: script, settings, params, input files and the parents' keys), else the script itself; and the outputs
    and resources (a shared stage is one job)."""
    return (getattr(stage, "key", "") or stage.script, stage.outputs, stage.resources)


def _check_resources(spec: Spec, variants: list[tuple[Variant, Spec]], plans: list[Plan], names: list[str]) -> None:
    """A job array asks for the same resources for every task (sbatch(1) --array): refuse a sweep that changes a
    per-variant stage's resources, naming the stage and the sweep key."""
    for name in names:
        base = plans[0].stage(name).resources
        for (variant, _), plan in zip(variants, plans):
            if plan.stage(name).resources == base:
                continue
            first = variants[0][0]
            keys = [k for (k, v), (_, v0) in zip(variant.values, first.values) if v != v0] or [k for k, _ in variant.values]
            loc = variant.locs[[k for k, _ in variant.values].index(keys[0])] if variant.values else ("sweep",)
            raise error_at(spec.source, loc,
                           f"sweep key {keys[0]} changes the resources of stage {name} (variant {variant.name}: "
                           f"{_diff(base, plan.stage(name).resources)}); the variants of {name} run as one job "
                           "array, and every task of an array gets the same resources",
                           "sweep only values that leave resources alone, or write a separate pipeline per "
                           "resource shape")


def _diff(a: Resources, b: Resources) -> str:
    da, db = a.model_dump(), b.model_dump()
    return ", ".join(f"{k} {da[k]} vs {db[k]}" for k in da if da[k] != db[k])


def _links(plan: Plan, shared: set[str]) -> dict[str, list[str]]:
    """For each per-variant stage, the relative outputs of its shared ancestors, linked into its variant folder."""
    parents = plan.parents()
    result: dict[str, list[str]] = {}
    for stage in plan.stages:
        if stage.name in shared:
            continue
        ancestors = [a for a in dag.topological(parents) if a in shared and a in _upstream(parents, stage.name)]
        paths: list[str] = []
        for name in ancestors:
            roots = getattr(plan.stage(name), "output_roots", ()) or plan.stage(name).outputs
            paths += [r for r in roots if not PurePosixPath(r).is_absolute() and r not in paths]
        result[stage.name] = paths
    return result


def _upstream(parents: dict[str, list[str]], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(parents[name])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += parents[node]
    return seen


def _as_variant(stage: StagePlan, variant: str, shared: set[str]) -> StagePlan:
    def moved(paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(p if PurePosixPath(p).is_absolute() else f"variants/{variant}/{p}" for p in paths)

    after = tuple(p if p in shared else stage_name(p, variant) for p in stage.after)
    extra: dict[str, Any] = {}
    if hasattr(stage, "output_roots"):
        extra["output_roots"] = moved(stage.output_roots)
    return dataclasses.replace(stage, name=stage_name(stage.name, variant), after=after, outputs=moved(stage.outputs),
                               base=stage.name, variant=variant, **extra)


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
