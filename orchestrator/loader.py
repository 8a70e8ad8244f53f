"""Reading pipeline files: YAML (yamlsrc: located values, bomb and depth limits) -> the files a spec references
(`referenced_files`, what remote mode uploads)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from orchestrator import yamlsrc
from orchestrator.errors import PipelineError


def referenced_files(spec_path: Path) -> list[Path]:
    """The spec itself, then the local files it references, for upload. Deliberately simple:

    - `settings.<key>` and `stages[].params.<key>` string values (and strings in lists) that are relative paths
      of existing FILES inside the spec's folder (e.g. the hf family's `settings.data`);
    - `cluster: NAME` -> `clusters/NAME.yaml` next to the spec or in `../clusters` (the first found, as
      `spec.load` searches them).
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
