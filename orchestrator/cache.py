"""Stage cache across runs (issue 14 item 2): a stage whose key (fingerprint.py) matches a COMPLETED stage of an
earlier run on the same cluster, whose outputs still match what was recorded when it completed, is not submitted.

What a finished stage left (manifest and index) is orchestrator/manifest.py. Here:
- lookup: every index entry is verified against its run directory (state COMPLETED with that very job as the
  stage's latest attempt, the same key in its plan, the manifest present and every file in it unchanged) before
  use. Anything missing or odd means "run it".
- adoption: the manifest's files are hard-linked into the new run's workdir (directories are made anew), so the
  new run keeps its outputs when the earlier run is deleted later; across filesystems they are symlinked instead
  (then a vanished source shows as a mismatch at the next rerun, which runs the stage again). With one shared
  `workdir:` the files are already in place. The manifest is copied to the new run, so a later rerun checks the
  run's own copy (manifest.verify_own) and reruns a stage whose outputs were deleted or rewritten.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import dag
from orchestrator import state as statelib
from orchestrator.errors import PipelineError
from orchestrator.manifest import entries, read_manifest, verify
from orchestrator.scheduler import short_id
from orchestrator.state import Attempt, CacheSource, RunPaths, Store
from orchestrator.states import JobState

if TYPE_CHECKING:  # the job wrapper imports this module: keep Jinja and the families out of its start-up
    from orchestrator.plan import Plan, StagePlan



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
        saved = paths.plan_json()
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
        saved = paths.plan_json()
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
    return f"cached-{short_id(source.job_id)}"


def _mark_cached(store: Store, name: str, source: CacheSource, spec_version: int | None) -> None:
    job_id = cached_job_id(source)
    paths = store.paths
    manifest = read_manifest(RunPaths(Path(source.run_dir)).manifest(source.stage, source.job_id)) or {}
    paths.manifest(name, job_id).parent.mkdir(parents=True, exist_ok=True)
    statelib.write_json(paths.manifest(name, job_id), manifest)  # this run's own copy, checked by verify_own
    now = statelib.now_iso()
    # A record like the job wrapper's, so everything reading records (status fallback, notify) sees it ended well.
    statelib.write_json(paths.job_record(name, job_id, 0),
                        {"job_id": job_id, "stage": name, "restarts": 0, "start": now, "end": now, "exit_code": 0,
                         "reason": None, "cached_from": source.model_dump()})
    with store.update() as state:
        state.stages[name].attempts.append(Attempt(
            job_id=job_id, state=JobState.CACHED, exit_code=0, cached_from=source, spec_version=spec_version,
            reason=f"from run {source.run_id}, job {source.job_id}"))


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
