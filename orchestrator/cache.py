"""Stage cache across runs (issue 14 item 2): a stage whose key (fingerprint.py) matches a COMPLETED stage of an
earlier run on the same cluster, whose outputs still match what was recorded when it completed, is not submitted.

Three parts:
- manifest: when a stage completes with its declared outputs, the job wrapper records every file under the
  stage's output roots (relative path, size, mtime in ns, and the sha256 of small files) in
  records/<stage>/manifests/<job>.json. Size + mtime, not a content hash, for the big files: a 16 GB model on a
  shared filesystem takes minutes to hash and would be hashed at every submit; any rewrite changes the mtime.
  Small files (configs, `done` markers, reports) are hashed as well, since they are cheap and are the ones most
  likely to be rewritten with the same size within one mtime tick.
- index: $PIPELINE_HOME/cache/<key[:2]>/<key>.json, the newest few (run, stage, job) that produced the key; a
  lookup is one small file read per stage, never a scan of all runs. Entries are hints: every one is verified
  against its run directory (state COMPLETED with that very job as the stage's latest attempt, the same key in its
  plan, the manifest present and every file in it unchanged) before use. Anything missing or odd means "run it".
- adoption: the manifest's files are hard-linked into the new run's workdir (directories are made anew), so the
  new run keeps its outputs when the earlier run is deleted later; across filesystems they are symlinked instead
  (then a vanished source shows as a mismatch at the next rerun, which runs the stage again). With one shared
  `workdir:` the files are already in place. The manifest is copied to the new run, so a later rerun checks the
  run's own copy (verify_own) and reruns a stage whose outputs were deleted or rewritten.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import dag
from orchestrator import state as statelib
from orchestrator.errors import PipelineError
from orchestrator.state import Attempt, CacheSource, RunPaths, Store
from orchestrator.states import JobState

if TYPE_CHECKING:  # the job wrapper imports this module: keep Jinja and the families out of its start-up
    from orchestrator.plan import Plan, StagePlan

MANIFEST_VERSION = 1
SMALL_FILE_BYTES = 64 * 1024  # hashed in the manifest; larger files by size + mtime only (see the module doc)
MAX_MANIFEST_FILES = 200_000
INDEX_ENTRIES = 8  # per key: enough to survive a few deleted runs, small enough to verify in a blink


@dataclass(frozen=True)
class Options:
    """--no-cache (enabled False) and --force STAGE (force), from submit, render and rerun."""

    enabled: bool = True
    force: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    stage: str
    source: CacheSource | None  # set: reuse these outputs; None: the stage runs
    reason: str  # why it is reused, or why it must run

    @property
    def reuse(self) -> bool:
        return self.source is not None


@dataclass
class Adopted:
    """What adopt() did: the stages now CACHED in the run, and those that must run after all (with why)."""

    cached: dict[str, CacheSource] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- manifest


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


# ------------------------------------------------------------------------------------------------------- index


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


# ------------------------------------------------------------------------------------------------------ lookup


def decide(plan: Plan, names: Collection[str], options: Options, refresh: bool = True,
           must_run: Collection[str] = ()) -> dict[str, Decision]:
    """For each of `names` (topological order), whether an earlier run's outputs can stand in for it, and why
    (not). A stage runs when any parent of it among `names` runs, or is in `must_run`. `refresh`: ask the
    scheduler about a source stage whose state file is not final yet (render does not)."""
    unknown = sorted(options.force - {s.name for s in plan.stages})
    if unknown:
        raise PipelineError(f"--force {unknown[0]}: the pipeline has no stage {unknown[0]!r}",
                            f"stages: {', '.join(s.name for s in plan.stages)}")
    decisions: dict[str, Decision] = {}
    for name in [n for n in dag.topological(plan.parents()) if n in names]:
        stage = plan.stage(name)
        running = [p for p in stage.after if p in decisions and not decisions[p].reuse]
        why = _must_run(stage, options, running, must_run)
        if why is not None:
            decisions[name] = Decision(name, None, why)
            continue
        source, why = find(stage, plan.cluster.name, refresh)
        decisions[name] = Decision(name, source, why)
    return decisions


def _must_run(stage: StagePlan, options: Options, running: list[str], must_run: Collection[str]) -> str | None:
    if not options.enabled:
        return "--no-cache"
    if stage.name in options.force:
        return "--force"
    if stage.name in must_run:
        return "its key changed, it has not completed, or its outputs changed"
    if not stage.key:
        return "no key (a plan saved before stage keys)"
    if not stage.cache:
        return "cache: false (its kind or the stage says never reuse)"
    if not stage.outputs:
        return "declares no outputs: nothing to verify or hand over (declare `outputs:` to make it reusable)"
    if running:
        return f"it depends on {', '.join(running)}, which runs"
    return None


def find(stage: StagePlan, cluster: str, refresh: bool) -> tuple[CacheSource | None, str]:
    """The newest verified earlier completion of the stage's key, or None and why not."""
    found = entries(stage.key)
    if not found:
        return None, f"no earlier run has key {stage.key[:12]}"
    reasons = []
    for entry in found:
        try:
            why = _check_entry(entry, stage, cluster, refresh)
        except OSError as exc:  # an unreadable output or record: doubt, so the stage runs
            why = f"cannot read its outputs ({exc})"
        if why is None:
            source = CacheSource(run_id=str(entry["run_id"]), run_dir=str(entry["run_dir"]),
                                 stage=str(entry["stage"]), job_id=str(entry["job_id"]), key=stage.key)
            return source, f"from run {source.run_id}, job {source.job_id}"
        reasons.append(f"run {entry.get('run_id')}: {why}")
    return None, "; ".join(reasons[:2]) + ("; ..." if len(reasons) > 2 else "")


def _check_entry(entry: dict[str, Any], stage: StagePlan, cluster: str, refresh: bool) -> str | None:
    try:
        run_dir, name, job_id = Path(entry["run_dir"]), str(entry["stage"]), str(entry["job_id"])
    except (KeyError, TypeError):
        return "malformed index entry"
    if entry.get("cluster") != cluster:
        return f"ran on cluster {entry.get('cluster')}, not {cluster}"
    paths = RunPaths(run_dir)
    try:
        saved = json.loads(paths.plan.read_text(encoding="utf-8"))
        theirs = next(s for s in saved["stages"] if s["name"] == name)
        state = Store(run_dir).read()
    except (OSError, ValueError, KeyError, StopIteration, PipelineError):
        return "its run directory is gone or unreadable"
    if theirs.get("key") != stage.key:
        return f"its stage {name} now has another key (the run was re-planned)"
    attempt = state.stages[name].current if name in state.stages else None
    if attempt is None or attempt.job_id != job_id:
        return f"stage {name} was submitted again since job {job_id}"
    if attempt.state is not JobState.COMPLETED and refresh and not attempt.state.terminal:
        attempt = _refreshed(run_dir, name) or attempt
    if attempt.state is not JobState.COMPLETED or attempt.job_id != job_id:
        return f"stage {name} is {attempt.state.value}, not COMPLETED"
    manifest = read_manifest(paths.manifest(name, job_id))
    if manifest is None:
        return "no manifest of its outputs"
    why = verify(paths.workdir(saved.get("workdir")), manifest)
    return None if why is None else f"outputs differ: {why}"


def _refreshed(run_dir: Path, stage: str) -> Attempt | None:
    from orchestrator import status  # late: status imports scheduler plumbing

    try:
        view = status.refresh([run_dir])[0]
    except PipelineError:
        return None
    return view.state.stages[stage].current


# ---------------------------------------------------------------------------------------------------- adoption


def adopt(store: Store, plan: Plan, decisions: dict[str, Decision], spec_version: int | None = None) -> Adopted:
    """Link the outputs of every reused stage into this run's workdir and mark it CACHED; a stage whose files
    cannot be linked (or that another adoption left without its parent) runs instead, as do its dependents."""
    result = Adopted()
    target = store.paths.workdir(plan.workdir)
    for name in [n for n in dag.topological(plan.parents()) if n in decisions]:
        decision = decisions[name]
        if decision.source is None:
            continue
        lost = [p for p in plan.stage(name).after if p in result.failed]
        if lost:
            result.failed[name] = f"it depends on {', '.join(lost)}, which runs"
            continue
        try:
            mode = link_outputs(decision.source, target)
        except _LinkError as exc:
            result.failed[name] = str(exc)
            continue
        source = decision.source.model_copy(update={"linked": mode})
        _mark_cached(store, name, source, spec_version)
        result.cached[name] = source
    return result


class _LinkError(Exception):
    pass


def link_outputs(source: CacheSource, target: Path) -> str:
    """Hard-link (else symlink) every file of the source's manifest into `target`; "same" when both runs share
    the workdir. On any failure the links made so far are removed and _LinkError says why."""
    paths = RunPaths(Path(source.run_dir))
    manifest = read_manifest(paths.manifest(source.stage, source.job_id))
    try:
        saved = json.loads(paths.plan.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise _LinkError("its source run's plan is unreadable") from None
    if manifest is None:
        raise _LinkError("its source manifest vanished")
    origin = paths.workdir(saved.get("workdir"))
    made: list[Path] = []
    modes = set()
    try:
        for rel in manifest["files"]:
            src, dst = origin / rel, target / rel
            if rel.startswith("/") or _same_file(src, dst):
                modes.add("same")
                continue
            if dst.exists() or dst.is_symlink():
                raise _LinkError(f"{dst} already exists in this run's workdir (not overwritten)")
            dst.parent.mkdir(parents=True, exist_ok=True)
            modes.add(_link(src, dst))
            made.append(dst)
    except (OSError, _LinkError) as exc:
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()
        raise _LinkError(str(exc)) from None
    return "symlink" if "symlink" in modes else "hardlink" if "hardlink" in modes else "same"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst, follow_symlinks=True)
        return "hardlink"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    os.symlink(os.path.realpath(src), dst)
    return "symlink"


def cached_job_id(source: CacheSource) -> str:
    """The attempt id of a CACHED stage: no job of its own; names the job that made the outputs."""
    return f"cached-{source.job_id.rsplit('/', 1)[-1]}"  # the local backend's ids are <run id>/<n>: keep <n>


def _mark_cached(store: Store, name: str, source: CacheSource, spec_version: int | None) -> None:
    job_id = cached_job_id(source)
    paths = store.paths
    manifest = read_manifest(RunPaths(Path(source.run_dir)).manifest(source.stage, source.job_id)) or {}
    paths.manifest(name, job_id).parent.mkdir(parents=True, exist_ok=True)
    statelib.write_json(paths.manifest(name, job_id), manifest)  # this run's own copy, checked by verify_own
    now = statelib.now_iso()
    # A record like the job wrapper's, so everything reading records (status fallback, notify) sees it ended well.
    statelib.write_json(paths.records(name) / f"{job_id}.0.json",
                        {"job_id": job_id, "stage": name, "restarts": 0, "start": now, "end": now, "exit_code": 0,
                         "reason": None, "cached_from": source.model_dump()})
    with store.update() as state:
        state.stages[name].attempts.append(Attempt(
            job_id=job_id, state=JobState.CACHED, exit_code=0, cached_from=source, spec_version=spec_version,
            reason=f"from run {source.run_id}, job {source.job_id}"))


# ----------------------------------------------------------------------------------------- this run's own outputs


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


def describe(plan: Plan, decisions: dict[str, Decision]) -> list[str]:
    """One line a stage for `pipeline render` and `submit --dry-run`: reused (from which run and job) or runs (why)."""
    width = max((len(n) for n in decisions), default=0)
    lines = []
    for stage in plan.stages:
        decision = decisions.get(stage.name)
        if decision is not None:
            verdict = "reuse" if decision.reuse else "run  "
            lines.append(f"  {stage.name:<{width}}  {verdict}  {decision.reason}")
    return lines


def reused_lines(store: Store) -> list[str]:
    """After a submit or rerun: the stages now CACHED, and where their outputs came from."""
    return [f"{name}: CACHED ({stage.current.reason})" for name, stage in store.read().stages.items()
            if stage.current is not None and stage.state is JobState.CACHED and stage.current.cached_from is not None]


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
