"""Rerun and cancel: which stages a rerun resubmits (failed ones, or one named stage and what follows it, or a
sweep variant's), the finished upstream stages whose outputs changed since, and cancelling every live job of a
run or of one stage downstream. Submission itself, resume and holds are orchestrator/apply.py's.
"""

from __future__ import annotations

from collections.abc import Collection

from orchestrator import arrays, dag, manifest
from orchestrator.apply import adopt_orphans, release_holds, submit_stages
from orchestrator.errors import PipelineError
from orchestrator.merge import CANCEL_REQUESTED
from orchestrator.plan import Plan
from orchestrator.scheduler import Scheduler, live_jobs
from orchestrator.state import RunState, Store
from orchestrator.states import JobState
from orchestrator.sweep import split_name


def select_rerun(state: RunState, plan: Plan, stage: str | None, from_stage: str | None) -> set[str]:
    """Which stages a rerun resubmits (see `pipeline rerun --help`)."""
    parents = plan.parents()
    for name in (stage, from_stage):
        if name is not None and name not in parents:
            raise PipelineError(f"run {state.run_id} has no stage {name!r}", f"stages: {', '.join(parents)}")
    if from_stage is not None:
        order = dag.topological(parents)
        return set(order[order.index(from_stage):])
    if stage is not None:
        return dag.downstream(parents, [stage])
    unknown = [n for n, s in state.stages.items() if s.state is JobState.UNKNOWN]
    if unknown:
        raise PipelineError(f"stage(s) {', '.join(unknown)} are UNKNOWN: the scheduler cannot say how they ended",
                            f"check `pipeline status {state.run_id}` and the logs, then name one with --stage")
    failed = [n for n, s in state.stages.items() if not s.state.ok and not s.state.active]
    return dag.downstream(parents, failed)


def rerun(store: Store, plan: Plan, scheduler: Scheduler, stage: str | None = None,
          from_stage: str | None = None, notes: list[str] | None = None, variant: str | None = None) -> dict[str, str]:
    """Resubmit the selected stages; first release holds on the run's own jobs (their lines go to `notes`).
    With `variant`, only that sweep variant's stages (orchestrator/sweep.py select_rerun)."""
    released = release_holds(store, scheduler)
    if notes is not None:
        notes += released
    if released:
        from orchestrator import status  # late: status imports scheduler plumbing

        status.refresh([store.paths.root], {status.group_key(store.read(), store.paths.root): scheduler})
    state = store.read()
    if adopt_orphans(store, scheduler, notes):
        from orchestrator import status  # late: status imports scheduler plumbing

        status.refresh([store.paths.root], {status.group_key(state, store.paths.root): scheduler})
        state = store.read()
    if variant is not None:
        from orchestrator import sweep  # late: sweep builds on plan

        names = sweep.select_rerun(state, plan, variant, stage, from_stage)
    else:
        names = select_rerun(state, plan, stage, from_stage)
    done = "".join(f"; {line}" for line in released)  # said even when nothing is resubmitted
    if not names:
        raise PipelineError(f"run {state.run_id} has nothing to rerun: no stage failed{done}",
                            "name one with --stage S or --from S")
    names |= stale_upstream(store, plan, names, notes)
    refuse_busy(state, names, done)
    ids = submit_stages(store, plan, scheduler, names, state.spec_version)
    return dict(zip([n for n in dag.topological(plan.parents()) if n in names], ids))


def refuse_busy(state: RunState, names: Collection[str], done: str = "") -> None:
    busy = [n for n in names if n in state.stages and state.stages[n].state.active]
    if busy:
        raise PipelineError(f"stage(s) {', '.join(sorted(busy))} are still queued or running{done}",
                            f"wait, or cancel first: pipeline cancel {state.run_id} --stage {sorted(busy)[0]}")


def stale_upstream(store: Store, plan: Plan, names: set[str], notes: list[str] | None) -> set[str]:
    """Finished stages upstream of `names` whose outputs in this run's workdir no longer match their manifest (a
    CACHED stage's source deleted, a file rewritten): they run again, with the stages between them and `names`."""
    parents = plan.parents()
    above = set().union(*(dag.upstream(parents, n) for n in names)) - names
    stale = manifest.verify_own(store, plan, sorted(above))
    for name, why in sorted(stale.items()):
        if notes is not None:
            notes.append(f"stage {name}: its outputs changed ({why}): submitted again")
    return {n for n in dag.downstream(parents, stale) if n in above} if stale else set()


def cancel(store: Store, plan: Plan, scheduler: Scheduler, stage: str | None = None) -> list[str]:
    """Cancel every live job of the run, or of one stage and everything downstream of it: every attempt, not
    only the latest, and tagged jobs the state file never recorded (a duplicate, a submit killed before its
    state write), so nothing of the stage keeps running (issue 13 item 3)."""
    state = store.read()
    if stage is not None and stage not in state.stages:
        raise PipelineError(f"run {state.run_id} has no stage {stage!r}", f"stages: {', '.join(state.stages)}")
    names = set(state.stages) if stage is None else dag.downstream(plan.parents(), [stage])
    recorded = [a for n, s in state.stages.items() if n in names for a in s.attempts]
    ended = {a.job_id for a in recorded if a.state.terminal}
    candidates = [a.job_id for a in recorded if not a.state.terminal]
    candidates += _tagged(store, scheduler, state, names, ended | set(candidates))
    ids = live_jobs(scheduler, candidates)
    if ids:
        scheduler.cancel(ids)
        with store.update() as fresh:
            for name in names:
                for attempt in fresh.stages[name].attempts:
                    if attempt.job_id in ids:
                        attempt.reason = CANCEL_REQUESTED
    return ids


def _tagged(store: Store, scheduler: Scheduler, state: RunState, names: Collection[str], seen: set[str]) -> list[str]:
    """Jobs tagged with the stages' names that the state does not list as ended or live: a duplicate, a job a
    killed submit never recorded. A sweep's array carries its base stage's tag (arrays.array_tags) and holds every
    variant's task: of those, only the tasks of arrays no stage records (arrays.unrecorded: held, never ran), so
    cancelling one variant leaves the other variants' tasks alone."""
    bases = [b for b in arrays.array_tags(state) if any(split_name(n)[0] == b for n in names)]
    tagged = scheduler.find_tagged(store.paths.root, state.run_id, sorted(names) + bases)
    orphans = arrays.unrecorded(state, {b: tagged.pop(b, []) for b in bases if b not in names})
    found: list[str] = []
    for ids in [*tagged.values(), *orphans.values()]:
        found += [j for j in ids if j not in seen and j not in found]
    return found
