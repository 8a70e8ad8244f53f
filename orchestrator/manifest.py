"""What a finished stage leaves for later runs (issue 14 item 2), written by the job wrapper on the compute node:

- the manifest, records/<stage>/manifests/<job>.json: every file under the stage's output roots (relative path,
  size, mtime in ns, and the sha256 of small files). Size + mtime, not a content hash, for the big files: a 16 GB
  model on a shared filesystem takes minutes to hash and would be hashed at every submit; any rewrite changes the
  mtime. Small files (configs, `done` markers, reports) are hashed as well, since they are cheap and are the ones
  most likely to be rewritten with the same size within one mtime tick;
- the index, $PIPELINE_HOME/cache/<key[:2]>/<key>.json: the newest few (run, stage, job) that produced a key, so a
  lookup is one small file read per stage, never a scan of all runs. Entries are hints; orchestrator/cache.py
  verifies each against its run directory before use.
Kept apart from cache.py so the job wrapper imports neither Jinja nor the families.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import state as statelib
from orchestrator.errors import PipelineError
from orchestrator.state import RunPaths, Store

if TYPE_CHECKING:
    from orchestrator.plan import Plan

MANIFEST_VERSION = 1
SMALL_FILE_BYTES = 64 * 1024  # hashed in the manifest; larger files by size + mtime only (see the module doc)
MAX_MANIFEST_FILES = 200_000
INDEX_ENTRIES = 8  # per key: enough to survive a few deleted runs, small enough to verify in a blink


def build_manifest(workdir: Path, roots: Iterable[str]) -> dict[str, Any]:
    """Every file under the output roots: {relative path: [size, mtime_ns, sha256 or None]}. `complete` False (and
    `why`) when it cannot stand for the outputs: a root missing, a link to a folder, too many files."""
    files: dict[str, list[Any]] = {}
    why = None
    for root in roots:
        path = workdir / root
        if path.is_file():
            files[root] = _entry(path)
        elif path.is_dir():
            why = why or _walk(workdir, path, files)
        else:
            why = why or f"output {root} is missing or not a file or folder"
        if len(files) > MAX_MANIFEST_FILES:
            why = why or f"more than {MAX_MANIFEST_FILES} files under the outputs"
            files = {}
            break
    return {"version": MANIFEST_VERSION, "roots": list(roots), "files": files, "complete": why is None, "why": why}


def _walk(workdir: Path, top: Path, files: dict[str, list[Any]]) -> str | None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                return f"{os.path.join(dirpath, name)} is a link to a folder (not recorded, so not reusable)"
        for name in filenames:
            path = Path(dirpath) / name
            files[str(path.relative_to(workdir)) if not _absolute(top, workdir) else str(path)] = _entry(path)
        if len(files) > MAX_MANIFEST_FILES:
            return None  # the caller says so
    return None


def _absolute(top: Path, workdir: Path) -> bool:
    try:
        top.relative_to(workdir)
        return False
    except ValueError:
        return True


def _entry(path: Path) -> list[Any]:
    st = path.stat()  # follows symlinks: a symlinked output is recorded (and later checked) as what it points to
    digest = None
    if st.st_size <= SMALL_FILE_BYTES:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return [st.st_size, st.st_mtime_ns, digest]


def verify(workdir: Path, manifest: dict[str, Any]) -> str | None:
    """None when every recorded file is still there with the same size, mtime (and hash, for small files);
    otherwise the first difference, for the user."""
    if manifest.get("version") != MANIFEST_VERSION or not manifest.get("complete"):
        return f"its manifest is not usable ({manifest.get('why') or 'unknown version'})"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "its manifest lists no files"
    for rel, (size, mtime, digest) in files.items():
        path = workdir / rel
        try:
            st = path.stat()
        except OSError:
            return f"{path} is gone"
        if st.st_size != size or st.st_mtime_ns != mtime:
            return f"{path} changed since it was recorded (size/mtime)"
        if digest is not None and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return f"{path} changed since it was recorded (content)"
    return None


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_completion(paths: RunPaths, plan_json: dict[str, Any], stage: dict[str, Any], job_id: str) -> str:
    """Called by the job wrapper once the stage exited 0 with its declared outputs: write the manifest and enter
    the key in the index. Returns a line for the stage log. Never raises for a cache problem: a stage that did its
    work must not fail because its result cannot be remembered."""
    try:
        workdir = paths.workdir(plan_json.get("workdir"))
        roots = stage.get("output_roots") or []
        if not roots:
            return "not reusable by later runs: the stage declares no outputs"
        manifest = build_manifest(workdir, roots)
        target = paths.manifest(stage["name"], job_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        statelib.write_json(target, manifest)
        key = stage.get("key") or ""
        if not manifest["complete"] or not key or not stage.get("cache", True) or not manifest["files"]:
            return f"not reusable by later runs: {manifest['why'] or 'no key, no files or cache: false'}"
        remember(key, {"run_id": paths.root.name, "run_dir": str(paths.root.resolve()), "stage": stage["name"],
                       "job_id": job_id, "cluster": plan_json["cluster"]["name"], "recorded": statelib.now_iso()})
        return f"outputs recorded for reuse (key {key[:12]}, {len(manifest['files'])} files)"
    except (OSError, PipelineError, KeyError, TypeError, ValueError) as exc:
        return f"outputs not recorded for reuse: {exc}"


def index_path(key: str) -> Path:
    return statelib.pipeline_home() / "cache" / key[:2] / f"{key}.json"


def remember(key: str, entry: dict[str, Any]) -> None:
    path = index_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with statelib.locked(path.with_name(f".{path.name}.lock")):
        old = [e for e in entries(key) if (e.get("run_id"), e.get("stage")) != (entry["run_id"], entry["stage"])]
        statelib.write_json(path, [entry, *old][:INDEX_ENTRIES])


def entries(key: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(index_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def break_shared_links(workdir: Path, roots: Iterable[str]) -> int:
    """Before a stage runs, give it its own copy of every output file it shares with another run through a hard
    link (a later run adopted it): programs rewrite outputs in place (open(..., "wb") truncates the same inode),
    which would change the other run's files under it. Copy then rename keeps the content (a download that skips
    files already present still can), so only this run's name points at the new inode. Returns how many."""
    count = 0
    for root in roots:
        top = workdir / root
        candidates = [top] if top.is_file() else [Path(d) / f for d, _, fs in os.walk(top) for f in fs]
        for path in candidates:
            try:
                if path.is_symlink() or path.stat().st_nlink < 2:
                    continue
                tmp = path.with_name(f".{path.name}.{os.getpid()}.unshare")
                shutil.copy2(path, tmp)  # copy2 keeps the mtime, so the source's manifest still matches
                os.replace(tmp, path)
                count += 1
            except OSError:
                continue
    return count


def verify_own(store: Store, plan: Plan, names: Iterable[str]) -> dict[str, str]:
    """Of `names`, the stages that are COMPLETED or CACHED but whose outputs in this run's workdir no longer match
    their manifest (deleted, rewritten, a symlinked source gone): {stage: why}. A stage with no manifest (a run
    from before manifests) is taken as it is."""
    state = store.read()
    workdir = store.paths.workdir(plan.workdir)
    stale = {}
    for name in names:
        current = state.stages[name].current if name in state.stages else None
        if current is None or not current.state.ok:
            continue
        manifest = read_manifest(store.paths.manifest(name, current.job_id))
        if manifest is None or not manifest.get("files") or not manifest.get("complete"):
            continue  # nothing recorded, nothing to check: taken as it is, as before manifests existed
        why = verify(workdir, manifest)
        if why is not None:
            stale[name] = why
    return stale


def unlink_adopted(store: Store, plan: Plan, names: Iterable[str]) -> None:
    """Before a formerly CACHED stage runs for real, remove the files its adoption linked into this run's workdir:
    the program then writes new files instead of writing through a hard link (or symlink) into the source run."""
    state = store.read()
    workdir = store.paths.workdir(plan.workdir)
    for name in names:
        current = state.stages[name].current if name in state.stages else None
        if current is None or current.cached_from is None or current.cached_from.linked == "same":
            continue
        manifest = read_manifest(store.paths.manifest(name, current.job_id)) or {}
        for rel in manifest.get("files", {}):
            if not rel.startswith("/"):
                with contextlib.suppress(OSError):
                    (workdir / rel).unlink()
