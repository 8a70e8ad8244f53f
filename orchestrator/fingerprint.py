"""Stage fingerprints: the key of a stage is a hash of everything that determines its outputs (issue 14 item 1).

What goes in (DVC's dvc.lock idea, per stage: deps, params, outs): the rendered script with the spec's folder
replaced by a placeholder (so the same spec gives the same key wherever it was uploaded to), the stage's family,
kind, params and `run:` body, its declared outputs, the content hash of every file from the spec's folder the stage
reads, and the keys of the stages it depends on. What stays out: resources, retries and time limits (they change
how a stage runs, not what it produces); family settings count through the script, so a setting only finetune
renders changes finetune's key and its dependents', not download's.

Scripts carry no run-specific text: the run directory and job id reach them as $PIPELINE_RUN_DIR/$PIPELINE_JOB_ID
at run time (templates/_base.sh.j2), never rendered in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

KEY_VERSION = 1  # bump when what goes into a key changes: every older key then misses, never falsely hits
SPEC_DIR_PLACEHOLDER = "<spec_dir>"
# Files up to this size are hashed by content; larger ones (a local model's shards) by size + mtime, so a render or
# submit never spends minutes hashing weights; a rewrite still changes the mtime.
MAX_HASHED_FILE_BYTES = 64 << 20
MAX_DIR_FILES = 10_000


def stage_key(*, family: str, kind: str, script: str, params: Any, run: str | None, outputs: Iterable[str],
              files: Mapping[str, str], parents: Mapping[str, str], spec_dir: str) -> str:
    """The sha256 (hex) of the canonical JSON of what determines the stage's outputs."""
    body = {
        "version": KEY_VERSION, "family": family, "kind": kind,
        "script": normalised_script(script, spec_dir), "params": _plain(params), "run": run,
        "outputs": sorted(outputs), "files": dict(sorted(files.items())), "parents": dict(sorted(parents.items())),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def normalised_script(script: str, spec_dir: str) -> str:
    """The script as it would read from any folder: the spec's absolute folder is the one run-independent but
    location-dependent thing templates render in (data paths, include paths); the files' content is hashed."""
    return script.replace(spec_dir, SPEC_DIR_PLACEHOLDER) if spec_dir else script


def file_hashes(spec_dir: Path, values: Iterable[tuple[Any, bool]], script: str) -> dict[str, str]:
    """{relative path: sha256} of the files in the spec's folder this stage reads: string values among `values`
    ((value, is the stage's own param) pairs: its params, and the family settings) that name an existing file or folder inside the spec's folder
    (absolute, or relative to it) and that the stage uses (its own params, or the path rendered in its script).
    A folder counts as all its files, by relative path."""
    base = spec_dir.resolve()
    found: dict[str, str] = {}
    for value, own in _strings(values):
        path = _inside(base, value)
        if path is None or (not own and str(path) not in script and value not in script):
            continue
        rel = str(path.relative_to(base))
        if path.is_file():
            found[rel] = content_hash(path)
        elif path.is_dir():
            found[rel + "/"] = dir_hash(path)
    return found


def content_hash(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_HASHED_FILE_BYTES:
        return f"size:{size}:mtime:{path.stat().st_mtime_ns}"  # cheap and still changes when the file is rewritten
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dir_hash(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if len(files) > MAX_DIR_FILES:
        return f"files:{len(files)}:mtime:{max(p.stat().st_mtime_ns for p in files)}"
    for file in files:
        digest.update(f"{file.relative_to(path)}\0{content_hash(file)}\n".encode())
    return digest.hexdigest()


def _strings(values: Iterable[tuple[Any, bool]]) -> Iterable[tuple[str, bool]]:
    """(string, is the stage's own param) from (value, own) pairs, descending into lists and mappings."""
    for value, own in values:
        stack: list[Any] = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                yield item, own
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())


def _inside(base: Path, value: str) -> Path | None:
    if not value or len(value) > 4096 or "\n" in value or "\0" in value or "://" in value:
        return None
    try:
        path = (base / value).resolve() if not value.startswith("/") else Path(value).resolve()
        path.relative_to(base)
        return path if path.exists() and path != base else None
    except (OSError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """JSON-able form of params (a pydantic model or a dict)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return json.loads(json.dumps(value, sort_keys=True, default=str))
