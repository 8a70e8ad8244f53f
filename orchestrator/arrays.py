"""Submitting a sweep's plan: each base stage's per-variant stages as one job array, chained per variant.

Task i of every array of one submission is the same variant: variants are taken in the plan's order and cut at
the same boundaries (MaxArraySize, `scontrol show config`, asked once), so chunk k of merge pairs task by task
with chunk k of finetune through `aftercorr` (sbatch(1), Slurm 22.05: a task starts once the *corresponding* task
of the parent array completed successfully; a failed task cancels only its own dependent task under
--kill-on-invalid-dep=yes). A shared stage is one job: its dependents wait for it with afterok. Where the tasks of
a group cannot be paired one to one (a rerun of some variants whose parents are still running in another array),
its stages are submitted one job each, with afterok on the exact task ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import dag
from orchestrator import state as statelib
from orchestrator.deps import dependency_id
from orchestrator.plan import Plan
from orchestrator.scheduler import ArrayRequest, Scheduler, SubmitRequest, live_jobs
from orchestrator.state import Attempt, RunState, Store
from orchestrator.sweep import split_name


@dataclass(frozen=True)
class Unit:
    """What one sbatch submits: a shared stage (one name) or one base stage's variant stages."""

    base: str
    names: tuple[str, ...]
    array: bool


def units(plan: Plan, names: set[str]) -> list[Unit]:
    """Submission units in dependency order: each base stage's selected variant stages together."""
    order = [n for n in dag.topological(plan.parents()) if n in names]
    groups: dict[str, list[str]] = {}
    for name in order:
        stage = plan.stage(name)
        groups.setdefault(stage.base or name, []).append(name)
    return [Unit(base, tuple(members), plan.stage(members[0]).variant != "") for base, members in groups.items()]


def submit_stages(store: Store, plan: Plan, scheduler: Scheduler, names: set[str],
                  spec_version: int | None = None) -> list[str]:
    """apply.submit_stages for a plan with variants: held, recorded as accepted, released together. Returns the
    new job ids in the plan's dependency order."""
    current = store.read()
    plan_units = units(plan, names)
    limit = scheduler.max_array_size() if any(u.array and len(u.names) > 1 for u in plan_units) else 0
    submitted: dict[str, str] = {}
    arrays: set[tuple[str, ...]] = set()  # the stage tuples submitted as one array each (task i = member i)
    try:
        for unit in plan_units:
            if not unit.array:
                _single(store, plan, scheduler, current, unit.names[0], submitted, spec_version)
                continue
            cut = [unit.names[i:i + limit] for i in range(0, len(unit.names), limit)] if limit else [unit.names]
            for chunk in cut:
                _array(store, plan, scheduler, current, unit.base, chunk, submitted, arrays, spec_version)
        statelib.faultpoint("before-release")
    finally:
        if submitted:
            scheduler.release(list(submitted.values()))
    return [submitted[n] for n in dag.topological(plan.parents()) if n in submitted]


def _single(store: Store, plan: Plan, scheduler: Scheduler, current: RunState, name: str,
            submitted: dict[str, str], spec_version: int | None) -> None:
    stage = plan.stage(name)
    after = [j for p in stage.after if (j := dependency_id(current, name, p, submitted)) is not None]
    job_id = scheduler.submit(SubmitRequest(run_dir=store.paths.root, run_id=current.run_id, stage=name,
                                            resources=stage.resources, after=tuple(after), hold=True,
                                            retries=stage.retries))
    _record(store, {name: job_id}, submitted, spec_version)


def _array(store: Store, plan: Plan, scheduler: Scheduler, current: RunState, base: str, chunk: tuple[str, ...],
           submitted: dict[str, str], arrays: set[tuple[str, ...]], spec_version: int | None) -> None:
    first = plan.stage(chunk[0])
    after: list[str] = []
    corr: list[tuple[str, ...]] = []
    for parent in first.after:
        parent_base = plan.stage(parent).base
        if not parent_base:  # shared: one job (or done), the same for every task
            job_id = dependency_id(current, chunk[0], parent, submitted)
            after += [job_id] if job_id is not None else []
            continue
        mine = tuple(p for n in chunk for p in plan.stage(n).after if plan.stage(p).base == parent_base)
        waits = [dependency_id(current, n, p, submitted) for n, p in zip(chunk, mine)]
        if all(i is None for i in waits):
            continue  # every variant's parent is done: nothing to wait for
        if mine in arrays:
            corr.append(tuple(submitted[p] for p in mine))  # the parent array of the same variants, same order
            continue
        for name in chunk:  # tasks that cannot pair one to one: one job each, afterok on exact ids
            _single(store, plan, scheduler, current, name, submitted, spec_version)
        return
    if len(chunk) == 1:
        _single(store, plan, scheduler, current, chunk[0], submitted, spec_version)
        return
    ids = scheduler.submit_array(ArrayRequest(
        run_dir=store.paths.root, run_id=current.run_id, stage=base, tasks=chunk, resources=first.resources,
        after=tuple(dict.fromkeys(after)), corr=tuple(corr), hold=True, retries=first.retries,
        throttle=plan.throttle))
    # Test-only: the Slurm executor's `sbatch-accepted` point (slurm_submit._executor) misses arrays, which
    # submitit 1.5.4 map_array sends through a plain SlurmExecutor copy (slurm/slurm.py, `array_ex`).
    statelib.faultpoint("array-accepted", base)
    arrays.add(chunk)
    _record(store, dict(zip(chunk, ids)), submitted, spec_version)


def _record(store: Store, jobs: dict[str, str], submitted: dict[str, str], spec_version: int | None) -> None:
    with store.update() as state:
        for name, job_id in jobs.items():
            state.stages[name].attempts.append(Attempt(job_id=job_id, spec_version=spec_version))
    submitted.update(jobs)  # after the write: only recorded jobs are released (what withdraw_unrecorded relies on)
    for name in jobs:
        statelib.faultpoint("recorded", name)


def array_tags(state: RunState) -> list[str]:
    """The tags a sweep's job arrays carry besides the stage names: each base stage of a per-variant stage
    (slurm_submit.job_name of ArrayRequest.stage)."""
    return sorted({base for base, variant in map(split_name, state.stages) if variant is not None})


def withdraw_unrecorded(store: Store, scheduler: Scheduler, found: dict[str, list[str]]) -> list[str]:
    """Cancel the job arrays found by tag (`found`: base stage -> task ids) of which the state records no task:
    sbatch accepted them, then the submit died before `_record` (one state write per array, so an array is
    recorded whole or not at all). Returns one line per array cancelled.

    Cancel, not adopt: such an array never ran. Every job a submit sends is held (sbatch(1) --hold) and released
    only at the end, and only once recorded (`_record` writes the state first); a SIGKILL skips the release.
    Adopting it would mean knowing which variant task i runs: submitit 1.5.4 (slurm/slurm.py
    SlurmExecutor._internal_process_submissions) dumps one <uuid>.pkl per task and moves them to submitit/<A>_<i>/
    only after sbatch returns, so a kill in between leaves the order nowhere on disk, and the chunk would have to
    be recomputed from a MaxArraySize that may have changed since. scancel(1) of a job that never started only
    ends its queue entry (CANCELLED); resume then submits the stages as if the array had never been sent.
    """
    orphans = unrecorded(store.read(), found)
    live = set(live_jobs(scheduler, [j for ids in orphans.values() for j in ids]))
    if not live:
        return []
    scheduler.cancel([j for ids in orphans.values() for j in ids if j in live])
    return [f"stage {base}: job array {array} ({len(ids)} tasks) was accepted by sbatch but never recorded (the "
            f"submit was interrupted): cancelled; its stages count as not submitted"
            for (base, array), ids in orphans.items() if any(j in live for j in ids)]


def unrecorded(state: RunState, found: dict[str, list[str]]) -> dict[tuple[str, str], list[str]]:
    """Of the task ids found by base-stage tag (`found`: base -> ids), those of arrays no stage records, by
    (base stage, array id). An array is recorded whole or not at all (one state write in `_record`)."""
    recorded = {a.job_id.partition("_")[0] for s in state.stages.values() for a in s.attempts}
    orphans: dict[tuple[str, str], list[str]] = {}
    for base, ids in found.items():
        for job_id in ids:
            if job_id.partition("_")[0] not in recorded:
                orphans.setdefault((base, job_id.partition("_")[0]), []).append(job_id)
    return orphans
