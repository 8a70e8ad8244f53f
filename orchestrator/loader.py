"""Reading pipeline files: YAML (yamlsrc: located values, bomb and depth limits) -> `--set` overrides -> the
models (orchestrator/spec.py) -> the dependency graph, the cluster profile, the checks past the models
(orchestrator/checks.py) -> a Spec. Also the cluster profiles by name, and the files a spec references
(`referenced_files`, what remote mode uploads). Every error names file, line and key."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator import checks, dag, yamlsrc
from orchestrator.errors import PipelineError
from orchestrator.spec import LOCAL_CLUSTER, ClusterProfile, Pipeline, Spec, resolve_after
from orchestrator.yamlsrc import error_at, validation_error


def load(path: Path, cluster_dirs: list[Path] | None = None, overrides: Sequence[str] = ()) -> Spec:
    """Load and fully validate a pipeline file, with `--set` overrides applied first (validated like the file).
    Raises SpecError naming file, line and key (or the override)."""
    source = yamlsrc.load(path)
    if overrides:
        from orchestrator import overrides as overrides_mod  # late: a small module only `--set` needs

        source = overrides_mod.apply(source, overrides)
    if not isinstance(source.data, dict):
        raise error_at(source, (), "a pipeline file must be a mapping with `name:` and `stages:`")
    try:
        pipeline = Pipeline.model_validate(source.data)
    except ValidationError as exc:
        raise validation_error(source, exc) from None
    _check_graph(source, pipeline)
    cluster = _resolve_cluster(source, pipeline, cluster_dirs or default_cluster_dirs(path))
    for warning in checks.check(source, pipeline, cluster):
        print(f"warning: {warning}", file=sys.stderr)
    spec = Spec(pipeline, cluster, source)
    if pipeline.sweep is not None:
        from orchestrator import (
            sweep,  # late: only a spec with `sweep:` needs it (it builds each variant's plan)
        )

        for warning in sweep.validate(spec):
            print(f"warning: {warning}", file=sys.stderr)
    return spec


def _check_graph(source: yamlsrc.Located, pipeline: Pipeline) -> None:
    names: dict[str, int] = {}
    for index, stage in enumerate(pipeline.stages):
        if stage.name in names:
            raise error_at(source, ("stages", index, "name"), f"duplicate stage name {stage.name!r}",
                           f"first defined as stages[{names[stage.name]}]")
        names[stage.name] = index
    for index, stage in enumerate(pipeline.stages):
        for j, parent in enumerate(stage.after or []):
            if parent not in names:
                raise error_at(source, ("stages", index, "after", j), f"unknown stage {parent!r}",
                               f"known stages: {', '.join(names)}")
            if parent == stage.name:
                raise error_at(source, ("stages", index, "after", j), "a stage cannot wait for itself")
    cycle = dag.find_cycle(resolve_after(pipeline.stages))
    if cycle:
        first = names[cycle[0]]
        raise error_at(source, ("stages", first, "after"), f"dependency cycle: {' -> '.join(cycle)}")


def default_cluster_dirs(spec_path: Path) -> list[Path]:
    repo_clusters = Path(__file__).resolve().parent.parent / "clusters"
    return [spec_path.resolve().parent / "clusters", spec_path.resolve().parent.parent / "clusters",
            Path.home() / ".pipeline" / "clusters", repo_clusters]


def _resolve_cluster(source: yamlsrc.Located, pipeline: Pipeline, dirs: list[Path]) -> ClusterProfile:
    if isinstance(pipeline.cluster, ClusterProfile):
        return pipeline.cluster
    for directory in dirs:
        candidate = directory / f"{pipeline.cluster}.yaml"
        if candidate.is_file():
            return load_cluster(candidate)
    if pipeline.cluster == "local":
        return LOCAL_CLUSTER
    searched = ", ".join(str(d) for d in dirs)
    raise error_at(source, ("cluster",), f"unknown cluster {pipeline.cluster!r}",
                   f"write clusters/{pipeline.cluster}.yaml (searched {searched}) or use `cluster: local`")


def load_cluster(path: Path) -> ClusterProfile:
    source = yamlsrc.load(path)
    if not isinstance(source.data, dict):
        raise error_at(source, (), "a cluster profile must be a mapping")
    try:
        return ClusterProfile.model_validate(source.data)
    except ValidationError as exc:
        raise validation_error(source, exc) from None


def find_profile(name: str, cwd: Path | None = None) -> ClusterProfile:
    """The cluster profile NAME from the folders a pipeline file in `cwd` would search (`--remote-cluster`,
    `clusters describe`)."""
    for directory in default_cluster_dirs((cwd or Path.cwd()) / "pipeline.yaml"):
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return load_cluster(candidate)
    raise PipelineError(f"no cluster profile {name!r}", "looked in ./clusters, ~/.pipeline/clusters and pipeline's own")


def referenced_files(spec_path: Path) -> list[Path]:
    """The spec itself, then the local files it references, for upload. Deliberately simple:

    - `settings.<key>` and `stages[].params.<key>` string values (and strings in lists) that are relative paths
      of existing FILES inside the spec's folder (e.g. the hf family's `settings.data`);
    - `cluster: NAME` -> `clusters/NAME.yaml` next to the spec or in `../clusters` (the first found, as
      `load` searches them).
    Not uploaded: absolute paths (they name head-node paths), directories, paths leaving the spec's folder,
    `secrets:` files (secrets never leave this machine), files named only inside `run:` bodies. A file that is
    not valid YAML yields just the spec, so the remote `pipeline` reports the located error.
    """
    spec_path = Path(spec_path)
    found: list[Path] = [spec_path]
    try:
        data = yamlsrc.load(spec_path).data  # the same bomb/depth limits as validate: it runs before it
    except PipelineError:
        return found
    if not isinstance(data, dict):
        return found
    base = spec_path.resolve().parent
    seen = {spec_path.resolve()}
    for value in _strings(_param_values(data)):
        path = _inside(base, value)
        if path is not None and path not in seen:
            seen.add(path)
            found.append(path)
    profile = _cluster_file(data.get("cluster"), base)
    if profile is not None and profile not in seen:
        found.append(profile)
    return found


def _param_values(data: dict[str, Any]) -> list[Any]:
    candidates: list[Any] = []
    settings = data.get("settings")
    if isinstance(settings, dict):
        candidates.extend(settings.values())
    for stage in data.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("params"), dict):
            candidates.extend(stage["params"].values())
    return candidates


def _cluster_file(cluster: Any, base: Path) -> Path | None:
    """`cluster: NAME` -> the first clusters/NAME.yaml next to the spec or in ../clusters."""
    if not isinstance(cluster, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", cluster):
        return None
    for directory in (base / "clusters", base.parent / "clusters"):
        profile = directory / f"{cluster}.yaml"
        if profile.is_file():
            return profile.resolve()
    return None


def _strings(values: list[Any]) -> list[str]:
    out: list[str] = []
    for value in values:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


def _inside(base: Path, value: str) -> Path | None:
    if not value or "\n" in value or len(value) > 4096 or "://" in value or value.startswith(("/", "~")):
        return None
    try:
        path = (base / value).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path
