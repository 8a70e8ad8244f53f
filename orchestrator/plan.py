"""Plan layer: pure. Turns a validated Spec into rendered scripts, resources and dependencies as data.

No cluster call happens here (style.md practice 3): `pipeline render` must work on a laptop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from orchestrator import dag, families, fingerprint, layout, sbatch
from orchestrator.container import flags as container_flags
from orchestrator.errors import RenderError
from orchestrator.spec import ClusterProfile, Resources, SecretRef, Spec

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class StagePlan:
    name: str
    kind: str
    family: str
    after: tuple[str, ...]
    resources: Resources
    script: str
    outputs: tuple[str, ...]
    retries: int
    key: str = ""  # fingerprint.stage_key: equal keys, equal outputs (issue 14 item 1); "" in plans saved before it
    cache: bool = True  # False: never reused from another run (the kind or the stage says so)
    output_roots: tuple[str, ...] = ()  # what the cache links into a new run's workdir and manifests (cache.py)
    base: str = ""  # a sweep's per-variant stage `finetune@v2`: its stage in the file (`finetune`); "" otherwise
    variant: str = ""  # ... and its variant (`v2`); "" for a stage every variant shares (orchestrator/sweep.py)

    def sbatch_flags(self) -> list[str]:
        """The stage's resources as sbatch flags, for display (the Slurm backend maps the same fields)."""
        return resource_flags(self.resources)


@dataclass(frozen=True)
class Plan:
    pipeline: str
    cluster: ClusterProfile
    workdir: str | None
    secrets: dict[str, SecretRef]
    stages: tuple[StagePlan, ...]
    variants: tuple[dict[str, Any], ...] = ()  # a sweep's variants: {index, name, values}, in order (sweep.py)
    throttle: int | None = None  # a sweep's `throttle`: at most this many tasks of each array at once

    def stage(self, name: str) -> StagePlan:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def parents(self) -> dict[str, list[str]]:
        return {s.name: list(s.after) for s in self.stages}

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "cluster": self.cluster.model_dump(),
            "workdir": self.workdir,
            "secrets": {k: v.model_dump(exclude_none=True) for k, v in self.secrets.items()},
            "stages": [
                {"name": s.name, "kind": s.kind, "family": s.family, "after": list(s.after),
                 "resources": s.resources.model_dump(exclude_none=True), "sbatch": s.sbatch_flags(),
                 "outputs": list(s.outputs), "retries": s.retries,
                 "script_sha256": hashlib.sha256(s.script.encode()).hexdigest(),
                 "key": s.key, "cache": s.cache, "output_roots": list(s.output_roots),
                 **({"base": s.base, "variant": s.variant} if s.variant else {})}
                for s in self.stages
            ],
            **({"variants": list(self.variants), "throttle": self.throttle} if self.variants else {}),
        }


def load_saved(plan_json: dict[str, Any], scripts_dir: Path) -> Plan:
    """The plan a run was submitted with (plan.json + scripts/): reruns use exactly what was rendered then."""
    stages = tuple(
        StagePlan(s["name"], s["kind"], s["family"], tuple(s["after"]), Resources.model_validate(s["resources"]),
                  (scripts_dir / f"{s['name']}.sh").read_text(encoding="utf-8"), tuple(s["outputs"]), s["retries"],
                  s.get("key", ""), bool(s.get("cache", True)), tuple(s.get("output_roots", ())),
                  s.get("base", ""), s.get("variant", ""))
        for s in plan_json["stages"]
    )
    secrets = {k: SecretRef.model_validate(v) for k, v in plan_json["secrets"].items()}
    return Plan(plan_json["pipeline"], ClusterProfile.model_validate(plan_json["cluster"]), plan_json["workdir"],
                secrets, stages, tuple(plan_json.get("variants", ())), plan_json.get("throttle"))


def resource_flags(res: Resources) -> list[str]:
    return sbatch.flags(res)


def shell_quote(value: Any) -> str:
    """Jinja filter `q`: every value that reaches a script goes through this (stages.md defect 3)."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,  # a missing variable fails the render (defect 21)
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = shell_quote
    env.filters["json"] = lambda v: json.dumps(v, sort_keys=True)
    return env


def build(spec: Spec, variant: dict[str, dict[str, Any]] | None = None) -> Plan:
    """Render every stage; raises RenderError before anything is submitted. A spec with a sweep expands into its
    variants (orchestrator/sweepplan.py), which renders each variant's stages with `variant` = {stage: {name, links}}:
    the template gives such a stage its own folder under the workdir."""
    pipeline = spec.pipeline
    if pipeline.sweep is not None:
        from orchestrator import sweepplan  # late: only a sweep needs it; it gets this function, never imports plan

        return sweepplan.build_plan(spec, build)
    registry = families.registry()
    parents = spec.parents()
    order = dag.topological(parents)
    by_name = {s.name: s for s in pipeline.stages}
    stages = []
    keys: dict[str, str] = {}
    spec_dir = spec.source.path.parent.resolve()
    for name in order:
        stage = by_name[name]
        family = registry[families.family_of(pipeline, stage)]
        kind = families.kind_of(family, stage.kind)
        assert kind is not None  # spec validation guarantees it
        settings = families.settings_of(pipeline, family)
        params: Any = stage.params if stage.kind == "command" else kind.params.model_validate(stage.params)
        resources = stage.resources.over(spec.cluster.defaults)
        context = {
            "pipeline": pipeline, "stage": stage, "settings": settings, "params": params, "resources": resources,
            "cluster": spec.cluster, "workdir": pipeline.workdir, "venv": pipeline.venv,
            "container": container_flags(pipeline.container_of(stage)), "variant": (variant or {}).get(name),
            "env": {**spec.cluster.env, **pipeline.env, **stage.env}, "spec_dir": str(spec.source.path.parent.resolve()),
            "paths": layout.script_paths(),  # run-dir paths as $PIPELINE_RUN_DIR/...: the script stays run-independent
            **family.context(settings),
        }
        script = render(kind.template, context)
        outputs = tuple(kind.outputs(settings, params)) + tuple(stage.outputs)
        files = fingerprint.file_hashes(spec_dir, [(stage.params, True), (settings.model_dump(), False)], script)
        keys[name] = fingerprint.stage_key(
            family=family.name, kind=stage.kind, script=script, params=params, run=stage.run, outputs=outputs,
            files=files, parents={p: keys[p] for p in parents[name]}, spec_dir=str(spec_dir))
        stages.append(StagePlan(name, stage.kind, family.name, tuple(parents[name]), resources, script, outputs,
                                stage.retries, keys[name], kind.cache and stage.cache))
    return Plan(pipeline.name, spec.cluster, pipeline.workdir, dict(pipeline.secrets), with_output_roots(stages))


def with_output_roots(stages: list[StagePlan]) -> tuple[StagePlan, ...]:
    """Each stage's output roots: for every declared output, its shortest leading part (`model` of
    `model/config.json`) that no other stage's declared output lies under, so linking a cached stage's roots into a
    new run brings the whole model folder but never a folder another stage writes into (`reports/` of evaluate and
    inference). Absolute outputs are their own root (the same path in every run)."""
    claimed = {s.name: [PurePosixPath(o).parts for o in s.outputs] for s in stages}
    out = []
    for stage in stages:
        others = [parts for name, all_parts in claimed.items() if name != stage.name for parts in all_parts]
        roots: list[str] = []
        for parts in claimed[stage.name]:
            root = parts if not parts or parts[0] == "/" else _free_prefix(parts, others)
            text = str(PurePosixPath(*root)) if root else ""
            if text and text not in roots:
                roots.append(text)
        out.append(dataclasses.replace(stage, output_roots=tuple(roots)))
    return tuple(out)


def _free_prefix(parts: tuple[str, ...], others: list[tuple[str, ...]]) -> tuple[str, ...]:
    for depth in range(1, len(parts) + 1):
        prefix = parts[:depth]
        if not any(other[:depth] == prefix for other in others):
            return prefix
    return parts


def render(template: str, context: dict[str, Any]) -> str:
    try:
        text = environment().get_template(template).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"template {exc.name} not found under {TEMPLATES}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{exc.filename or template}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{template}: {exc.message}", "a template used a variable the spec does not set") from None
    if not text.startswith("#!"):
        # sbatch and execve both need the shebang on line 1 (stages.md defect 5).
        raise RenderError(f"{template}: rendered script does not start with #!")
    return text
