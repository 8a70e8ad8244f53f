"""A sweep's plan (issue 14 item 5): every stage rendered once per variant (sweep.py expands them), shared where the
work is the same, one `<stage>@<variant>` stage per variant elsewhere.

A stage is shared when its rendered work (the cache's stage key, else its script; its outputs and resources) is the
same in every variant and all its parents are shared. A per-variant stage is rendered again with the template's
`variant` context: its own folder `$WORKDIR/variants/<variant>`, with the declared outputs of its shared ancestors
linked in, and its outputs checked there. Arrays need equal resources: a sweep that changes a per-variant stage's
resources is refused here, naming the stage and the sweep key.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from orchestrator import dag
from orchestrator.spec import Resources, Spec
from orchestrator.sweep import Variant, stage_name, variant_specs
from orchestrator.yamlsrc import error_at

if TYPE_CHECKING:
    from orchestrator.plan import Plan, StagePlan

Render = Callable[[Spec, "dict[str, dict[str, Any]] | None"], "Plan"]  # plan.build(spec, variant)
_PLANS: weakref.WeakKeyDictionary[Spec, Plan] = weakref.WeakKeyDictionary()  # one plan per loaded spec


def build_plan(spec: Spec, render: Render) -> Plan:
    """The expanded plan: shared stages once, the others once per variant (see the module docstring). `render` is
    plan.build, handed in so this module never imports plan (plan.build calls this one)."""
    cached = _PLANS.get(spec)
    if cached is None:
        cached = _PLANS[spec] = _build_plan(spec, render)
    return cached


def _build_plan(spec: Spec, render: Render) -> Plan:
    variants = variant_specs(spec)
    first = [render(s, None) for _, s in variants]
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
        rendered = render(variant_spec, context)
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
    return (stage.key or stage.script, stage.outputs, stage.resources)


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
            roots = plan.stage(name).output_roots or plan.stage(name).outputs
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
    return dataclasses.replace(stage, name=stage_name(stage.name, variant), after=after, outputs=moved(stage.outputs),
                               output_roots=moved(stage.output_roots), base=stage.name, variant=variant)
