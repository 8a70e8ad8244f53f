"""Apply layer: the only code that creates run directories and talks to a Scheduler to change anything.

Every spec error is raised before this layer runs; here a run directory is created, then stages are
submitted in topological order, each attempt recorded as soon as the scheduler accepts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Collection
from pathlib import Path

from orchestrator import cache, dag, durable, manifest, overrides
from orchestrator.deps import dependency_id
from orchestrator import state as statelib
from orchestrator.errors import PartlySubmitted, PipelineError
from orchestrator.plan import Plan
from orchestrator.scheduler import ACCOUNTED_AS, Scheduler, SubmitRequest, for_cluster
from orchestrator.spec import Spec
from orchestrator.state import Attempt, RunPaths, RunState, StageState, Store
from orchestrator.states import JobState


def run_root(spec: Spec, override: Path | None = None) -> Path:
    if override is not None:
        return override
    if os.environ.get("PIPELINE_RUN_ROOT"):
        return Path(os.environ["PIPELINE_RUN_ROOT"])
    if spec.cluster.run_root:
        return Path(os.path.expanduser(spec.cluster.run_root))
    return statelib.pipeline_home() / "runs"


def create_run(spec: Spec, plan: Plan, root: Path, hold: contextlib.ExitStack | None = None) -> Store:
    """Write the run directory: spec copy, plan, scripts and a state file with every stage NOT_SUBMITTED.

    It is assembled under a hidden staging name, entered in the run index, then renamed into place, so a kill at
    any instant leaves either a complete, listed, resumable run or a staging folder that the next submit sweeps
    away (nothing was submitted from it); never a directory `pipeline list` cannot see (issue 13 item 2).
    With `hold`, the run lock is taken before the run becomes visible and stays held until `hold` closes.
    """
    run_id = statelib.new_run_id(plan.pipeline)
    root.mkdir(parents=True, exist_ok=True)
    statelib.sweep_abandoned(root)
    final = root / run_id
    if final.exists():
        raise PipelineError(f"{final} already exists", "submit again: run ids are unique per second")
    paths = RunPaths(statelib.staging_dir(root, run_id))
    paths.root.mkdir()
    statelib.faultpoint("staging-created")
    paths.make_dirs()
    text = overrides.effective_text(spec.source)  # the file as written, or with --set overrides applied
    # Plain writes, then one barrier (durable.sync_tree) before the run is indexed and renamed into view: the
    # staging folder is read by nobody until then (a 64-variant sweep has 385 scripts; an fsync each was 1.5 s).
    durable.write_staged(paths.spec_copy, text)
    for stage in plan.stages:
        durable.write_staged(paths.script(stage.name), stage.script, mode=0o755)
    statelib.write_json(paths.plan, plan.to_json())
    store = Store(paths.root)
    store.create(RunState(
        run_id=run_id, pipeline=plan.pipeline, scheduler=plan.cluster.scheduler, cluster=plan.cluster.name,
        spec_sha256=hashlib.sha256(text.encode()).hexdigest(), workdir=plan.workdir,
        spec_source=str(spec.source.path.resolve()), spec_overrides=list(spec.source.overrides),
        stages={s.name: StageState(after=list(s.after)) for s in plan.stages},
    ))
    durable.sync_tree(paths.root)
    statelib.faultpoint("staged")
    if hold is not None:
        hold.enter_context(store.changing())  # flock follows the inode through the rename
    statelib.register(run_id, final)  # first: from the rename on, the run is listed
    statelib.faultpoint("indexed")
    os.rename(paths.root, final)
    statelib.faultpoint("visible")
    return Store(final)


def submit(spec: Spec, plan: Plan, root: Path, options: cache.Options = cache.Options()) -> Store:
    """torchx's submit = dry-run + schedule: create the run directory under `root`, then queue every stage.

    The run lock is held from before the run is visible to the last state write. A failure after the run exists
    is a PartlySubmitted naming the run, what is queued and what is not, and the two ways out (issue 13 item 7).
    """
    with contextlib.ExitStack() as hold:
        store = create_run(spec, plan, root, hold)
        scheduler = for_cluster(plan.cluster, store.paths.root)
        try:
            submit_with_cache(store, plan, scheduler, {s.name for s in plan.stages}, options, 1)
        except PipelineError as exc:
            state = store.read()
            queued = [f"{n} (job {s.current.job_id})" for n, s in state.stages.items() if s.current is not None]
            missing = [n for n, s in state.stages.items() if s.current is None]
            raise PartlySubmitted(
                state.run_id, f"{exc.message}\nrun {state.run_id} ({store.paths.root}) is partly submitted: "
                f"queued {', '.join(queued) or 'nothing'}; not submitted: {', '.join(missing) or 'none'}",
                f"fix the cause, then `pipeline submit --resume {state.run_id}` submits the rest; or give it up: "
                f"`pipeline cancel {state.run_id}` and `rm -r {store.paths.root}`") from None
    return store


def submit_with_cache(store: Store, plan: Plan, scheduler: Scheduler, names: set[str], options: cache.Options,
                      spec_version: int | None = None) -> dict[str, cache.Decision]:
    """Mark the stages of `names` an earlier run already produced CACHED (their outputs linked into this run),
    submit the others. Returns every stage's decision, with the reason it was reused or must run."""
    decisions = cache.decide(plan, names, options)
    adopted = cache.adopt(store, plan, decisions, spec_version)
    for name, why in adopted.failed.items():
        decisions[name] = cache.Decision(name, None, why)
    submit_stages(store, plan, scheduler, set(names) - set(adopted.cached), spec_version)
    return decisions


def submit_stages(store: Store, plan: Plan, scheduler: Scheduler, names: set[str],
                  spec_version: int | None = None) -> list[str]:
    """Submit `names` in topological order, held, then release them together. Returns the new job ids.

    A parent outside `names` must be COMPLETED (no dependency: Slurm rejects dependencies on purged jobs,
    desihub/desispec#2350) or still active (then the child depends on its job id).
    """
    manifest.unlink_adopted(store, plan, names)  # a CACHED stage that runs now writes files of its own
    if plan.variants:
        from orchestrator import arrays  # late: only a sweep needs it

        return arrays.submit_stages(store, plan, scheduler, names, spec_version)
    current = store.read()
    order = [n for n in dag.topological(plan.parents()) if n in names]
    submitted: dict[str, str] = {}
    try:
        for name in order:
            after = _dependency_ids(current, plan, name, submitted)
            stage = plan.stage(name)
            job_id = scheduler.submit(SubmitRequest(
                run_dir=store.paths.root, run_id=current.run_id, stage=name, resources=stage.resources,
                after=tuple(after), hold=True, retries=stage.retries))
            submitted[name] = job_id
            with store.update() as state:
                state.stages[name].attempts.append(Attempt(job_id=job_id, spec_version=spec_version))
            statelib.faultpoint("recorded", name)
        statelib.faultpoint("before-release")
    finally:
        # Release what was accepted even when a later sbatch failed: status shows the truth and
        # `pipeline rerun` submits the rest (the NOT_SUBMITTED stages) with dependencies on these.
        if submitted:
            scheduler.release(list(submitted.values()))
    return list(submitted.values())


def _dependency_ids(state: RunState, plan: Plan, name: str, submitted: dict[str, str]) -> list[str]:
    found = (dependency_id(state, name, parent, submitted) for parent in plan.stage(name).after)
    return [job_id for job_id in found if job_id is not None]


def adopt_orphans(store: Store, scheduler: Scheduler, notes: list[str] | None = None) -> dict[str, str]:
    """Record jobs the scheduler holds for this run but the state file does not (a submit killed between
    sbatch and the state write): they become the stage's latest attempt instead of being submitted twice.
    A sweep's job array, tagged with its base stage, is cancelled instead (arrays.withdraw_unrecorded says why);
    its lines go to `notes`."""
    from orchestrator import arrays  # late, as in submit_stages

    state = store.read()
    bases = arrays.array_tags(state)  # none unless the run is a sweep
    tagged = scheduler.find_tagged(store.paths.root, state.run_id, list(state.stages) + bases)
    if bases:
        lines = arrays.withdraw_unrecorded(store, scheduler, {b: tagged.pop(b, []) for b in bases})
        (notes if notes is not None else []).extend(lines)
    adopted: dict[str, str] = {}
    with store.update() as fresh:
        for stage, ids in tagged.items():
            known = {a.job_id for a in fresh.stages[stage].attempts}
            for job_id in ids:
                if job_id not in known:
                    fresh.stages[stage].attempts.append(Attempt(job_id=job_id, reason="adopted after interrupted submit"))
                    adopted[stage] = job_id
    return adopted


def resume(store: Store, plan: Plan, scheduler: Scheduler) -> list[str]:
    """Finish an interrupted submission: adopt tagged jobs, repair or replace any that cannot run, submit stages
    that never got one, release all. Returns one line per thing it did besides that (for the user)."""
    notes: list[str] = []
    adopt_orphans(store, scheduler, notes)
    broken: set[str] = set()
    for name, stage in store.read().stages.items():
        if stage.current is None or stage.state is not JobState.PENDING:
            continue
        runnable, note = scheduler.repair(store.paths.root, name, stage.current.job_id)
        if not runnable:
            broken.add(name)
            notes.append(f"stage {name}: job {stage.current.job_id} cannot run ({note}): cancelled, submitted again")
        elif note:
            notes.append(f"stage {name}: job {stage.current.job_id} repaired: {note}")
    if broken:
        _withdraw(store, scheduler, dag.downstream(plan.parents(), sorted(broken)), broken)
    state = store.read()
    missing = {n for n, s in state.stages.items()
               if s.state is JobState.NOT_SUBMITTED or (n in _redo(plan, broken) and not s.state.ok)}
    new_ids = submit_stages(store, plan, scheduler, missing, state.spec_version) if missing else []
    held = [s.current.job_id for s in store.read().stages.values()
            if s.current and s.state is JobState.PENDING and s.current.job_id not in new_ids]
    scheduler.release(held)  # jobs a killed submit left held (releasing a non-held pending job is harmless)
    return notes + release_holds(store, scheduler, skip=set(new_ids) | set(held))


def release_holds(store: Store, scheduler: Scheduler, skip: Collection[str] = ()) -> list[str]:
    """Release the holds Slurm (or someone) put on this run's own jobs, the current job of each stage and nothing
    else: after slurmctld is killed and restarted, a running job comes back "launch failed requeued held" and
    the chain stalls until someone looks (issue 13 item 4); `scontrol hold` does the same by hand. Each job is
    checked with repair() first, as resume does, so a job that cannot run is never released. One line per job."""
    state = store.read()
    mine = {s.current.job_id: n for n, s in state.stages.items()
            if s.current is not None and s.current.job_id not in skip}
    try:
        found = scheduler.query(list(mine)) if mine else {}
    except PipelineError:
        return []  # the scheduler cannot say what is held; resume/rerun still did the rest
    notes, release = [], []
    for job_id, info in found.items():
        if job_id not in mine or info.state is not JobState.HELD:
            continue
        if info.extra.get(ACCOUNTED_AS) == "COMPLETED":  # a controller's older state: releasing runs it twice
            notes.append(f"stage {mine[job_id]}: job {job_id} is held but accounting says it COMPLETED: not "
                         f"released; `scancel {job_id}` drops the stale copy, `scontrol release {job_id}` runs it again")
            continue
        runnable, why = scheduler.repair(store.paths.root, mine[job_id], job_id)
        if not runnable:
            notes.append(f"stage {mine[job_id]}: job {job_id} is held and cannot run ({why}); "
                         f"pipeline submit --resume {state.run_id} replaces it")
            continue
        release.append(job_id)
        notes.append(f"stage {mine[job_id]}: released job {job_id} (held: {info.reason or 'held'})")
    scheduler.release(release)
    return notes


def _redo(plan: Plan, broken: set[str]) -> set[str]:
    return dag.downstream(plan.parents(), sorted(broken)) if broken else set()


def _withdraw(store: Store, scheduler: Scheduler, names: set[str], broken: set[str]) -> None:
    """Cancel the held jobs of `names` (broken ones and the dependents whose afterok points at them) and record
    them CANCELLED at once, so the resubmission below does not wait for accounting to notice."""
    state = store.read()
    ids = [s.current.job_id for n, s in state.stages.items() if n in names and s.current and s.state.active]
    scheduler.cancel(ids)
    with store.update() as fresh:
        for name in names:
            current = fresh.stages[name].current
            if current is not None and current.job_id in ids:
                current.state = JobState.CANCELLED
                current.reason = ("cancelled by resume: could not run" if name in broken
                                  else "cancelled by resume: its dependency was submitted again")
