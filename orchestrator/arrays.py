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
from orchestrator.scheduler import ArrayRequest, Scheduler, SubmitRequest
from orchestrator.state import Attempt, RunState, Store


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
    arrays.add(chunk)
    _record(store, dict(zip(chunk, ids)), submitted, spec_version)


def _record(store: Store, jobs: dict[str, str], submitted: dict[str, str], spec_version: int | None) -> None:
    submitted.update(jobs)
    with store.update() as state:
        for name, job_id in jobs.items():
            state.stages[name].attempts.append(Attempt(job_id=job_id, spec_version=spec_version))
    for name in jobs:
        statelib.faultpoint("recorded", name)
