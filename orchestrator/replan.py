"""`pipeline rerun RUN --spec FILE` (issue 14 item 3): re-plan a run from an edited spec, keeping the results of
every stage whose key did not change, and every spec version the run went through (spec.<n>.yaml, plans/)."""

from __future__ import annotations

import hashlib
import shutil

from orchestrator import cache, dag, manifest, overrides
from orchestrator import state as statelib
from orchestrator.apply import submit_with_cache
from orchestrator.rerun_cancel import refuse_busy
from orchestrator.errors import PipelineError
from orchestrator.plan import Plan
from orchestrator.scheduler import Scheduler
from orchestrator.spec import Spec
from orchestrator.state import StageState, Store


def replan(store: Store, old: Plan, spec: Spec, new: Plan, scheduler: Scheduler,
           options: cache.Options = cache.Options(), notes: list[str] | None = None) -> dict[str, cache.Decision]:
    """`pipeline rerun RUN --spec FILE` (issue 14 item 3): re-plan the run from an edited spec. Stages whose key
    changed, new ones, those that did not complete and those whose outputs changed run again with their dependents
    (or are taken from an earlier run's identical stage); the others keep their results. The spec and plan are
    kept per version (spec.<n>.yaml, plans/plan.<n>.json) and every new attempt records its version. Refused,
    before anything changes, when the edit drops a stage that has a live job or changes a queued/running one."""
    state = store.read()
    new_names = [s.name for s in new.stages]
    gone = [n for n in state.stages if n not in new_names]
    live = [f"{n} (job {state.stages[n].current.job_id})" for n in gone  # type: ignore[union-attr]
            if state.stages[n].state.active]
    if live:
        raise PipelineError(f"the edited spec removes or renames stage(s) {', '.join(live)} of run {state.run_id}, "
                            "which still have a live job", f"cancel first (pipeline cancel {state.run_id} --stage "
                            f"{live[0].split(' ')[0]}) or keep the stage's name")
    old_keys = {s.name: s.key for s in old.stages}
    changed = {n for n in new_names if not old_keys.get(n) or old_keys[n] != new.stage(n).key}
    unfinished = {n for n in new_names if n not in state.stages or not state.stages[n].state.ok}
    parents = new.parents()
    selected = dag.downstream(parents, changed | unfinished)
    kept = sorted(set(new_names) - selected)
    stale = manifest.verify_own(store, new, kept)
    for name, why in sorted(stale.items()):
        if notes is not None:
            notes.append(f"stage {name}: its outputs changed ({why}): submitted again")
    selected |= dag.downstream(parents, stale)
    if not selected:
        raise PipelineError(f"run {state.run_id}: the edited spec changes no stage's key and every stage completed",
                            "nothing to rerun; resources and time limits do not change what a stage produces")
    refuse_busy(state, selected)
    version = state.spec_version + 1
    _write_version(store, spec, new, version)
    with store.update() as fresh:
        fresh.spec_version = version
        fresh.spec_source, fresh.spec_overrides = str(spec.source.path.resolve()), list(spec.source.overrides)
        fresh.spec_sha256 = hashlib.sha256(store.paths.spec_version(version).read_bytes()).hexdigest()
        fresh.workdir = new.workdir
        fresh.stages = {n: fresh.stages.get(n, StageState(after=[])) for n in new_names}
        for stage in new.stages:
            fresh.stages[stage.name].after = list(stage.after)
    for name in gone:
        if notes is not None:
            notes.append(f"stage {name}: not in the edited spec: dropped from the run (its history is in "
                         f"{store.paths.plan_version(version - 1).relative_to(store.paths.root)})")
    return submit_with_cache(store, new, scheduler, selected, options, version)


def _write_version(store: Store, spec: Spec, new: Plan, version: int) -> None:
    """Keep the previous plan and scripts under plans/, then write the new spec, plan and scripts in place (jobs
    read plan.json and scripts/<stage>.sh when they start: a live job of a kept stage has the same key, so the
    same script up to the spec's folder)."""
    paths = store.paths
    archive = paths.plan_version(version - 1)
    archive.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.plan, archive)
    scripts = paths.scripts
    shutil.copytree(scripts, paths.scripts_version(version - 1), dirs_exist_ok=True)
    statelib.atomic_write(paths.spec_version(version), overrides.effective_text(spec.source))
    for stage in new.stages:
        statelib.atomic_write(paths.script(stage.name), stage.script, mode=0o755)
    for script in scripts.glob("*.sh"):
        if script.stem not in {s.name for s in new.stages}:
            script.unlink()
    statelib.write_json(paths.plan, new.to_json())
