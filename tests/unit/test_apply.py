"""submit -> status -> rerun -> cancel against the in-memory FakeScheduler (no cluster needed)."""

from __future__ import annotations

import pytest

from orchestrator import apply, loader, plan, rerun_cancel, status
from orchestrator.errors import PipelineError, SchedulerError
from orchestrator.scheduler.fake import FakeScheduler
from orchestrator.states import JobState

CHAIN = """
    name: chain
    stages:
      - {name: a, kind: command, run: "true"}
      - {name: b, kind: command, run: "true"}
      - {name: c, kind: command, run: "true"}
      - {name: d, kind: command, run: "true", after: [a]}
"""


@pytest.fixture
def run(write_spec, tmp_path):
    loaded = loader.load(write_spec(CHAIN))
    built = plan.build(loaded)
    store = apply.create_run(loaded, built, tmp_path / "runs")
    fake = FakeScheduler()
    return store, built, fake


def refresh(store, fake):
    return status.refresh([store.paths.root], {"fake": fake, "local": fake})[0].state


def test_submit_chains_afterok_held_then_released(run):
    store, built, fake = run
    ids = apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    assert len(ids) == 4 and not fake.held
    by_stage = {r.stage: (j, r) for j, r in fake.requests.items()}
    assert by_stage["a"][1].after == () and by_stage["b"][1].after == (by_stage["a"][0],)
    assert by_stage["d"][1].after == (by_stage["a"][0],)
    assert all(r.hold for _, r in by_stage.values())
    assert store.read().stages["c"].current.job_id == by_stage["c"][0]


def test_status_queries_once_and_never_again_for_terminal(run):
    store, built, fake = run
    apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    for job_id in list(fake.jobs):
        fake.finish(job_id, JobState.COMPLETED)
    state = refresh(store, fake)
    assert fake.query_calls == 1 and all(s.state is JobState.COMPLETED for s in state.stages.values())
    refresh(store, fake)
    assert fake.query_calls == 1  # everything terminal: no query at all


def test_failure_then_rerun_resubmits_only_failed_and_downstream(run):
    store, built, fake = run
    apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    ids = {r.stage: j for j, r in fake.requests.items()}
    fake.finish(ids["a"], JobState.COMPLETED)
    fake.finish(ids["d"], JobState.COMPLETED)
    fake.finish(ids["b"], JobState.FAILED, exit_code=1)  # cancels c like --kill-on-invalid-dep
    state = refresh(store, fake)
    assert state.stages["c"].state is JobState.CANCELLED
    submitted = rerun_cancel.rerun(store, built, fake)
    assert set(submitted) == {"b", "c"}
    new_b = fake.requests[submitted["b"]]
    assert new_b.after == ()  # a is COMPLETED: no dependency on a finished (maybe purged) job
    assert fake.requests[submitted["c"]].after == (submitted["b"],)
    assert len(store.read().stages["b"].attempts) == 2 and len(store.read().stages["a"].attempts) == 1


def test_rerun_refuses_running_stage_and_unknown(run):
    store, built, fake = run
    apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    with pytest.raises(PipelineError, match="still queued or running"):
        rerun_cancel.rerun(store, built, fake, stage="b")
    fake.fail_query = True
    view = status.refresh([store.paths.root], {"fake": fake, "local": fake})[0]
    assert view.warning and all(s.state is JobState.UNKNOWN for s in view.state.stages.values())
    assert store.read().stages["a"].state is JobState.PENDING  # a failed query is never persisted


def test_unknown_when_scheduler_forgot_and_no_record(run):
    store, built, fake = run
    apply.submit_stages(store, built, fake, {"a"})
    fake.jobs.clear()  # purged from accounting, aged out of the queue
    state = refresh(store, fake)
    assert state.stages["a"].state is JobState.UNKNOWN
    with pytest.raises(PipelineError, match="UNKNOWN"):
        rerun_cancel.rerun(store, built, fake)


def test_failed_sbatch_midway_leaves_truthful_run_that_rerun_finishes(run):
    store, built, fake = run
    fake.fail_submit_of = "c"
    with pytest.raises(SchedulerError):
        apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    state = store.read()
    assert state.stages["c"].state is JobState.NOT_SUBMITTED and state.stages["b"].state is JobState.PENDING
    assert not fake.held  # what was accepted got released
    fake.fail_submit_of = None
    submitted = rerun_cancel.rerun(store, built, fake)
    assert set(submitted) == {"c"}
    b_job = store.read().stages["b"].current.job_id
    assert fake.requests[submitted["c"]].after == (b_job,)  # depends on the still-active parent


def test_cancel_stage_and_downstream(run):
    store, built, fake = run
    apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    ids = rerun_cancel.cancel(store, built, fake, stage="b")
    stage_of = {j: r.stage for j, r in fake.requests.items()}
    assert sorted(stage_of[i] for i in ids) == ["b", "c"]


def test_resume_adopts_orphans_and_submits_nothing_twice(run):
    store, built, fake = run
    # A submit killed right after sbatch accepted stage a: the job exists, the state file does not know it.
    from orchestrator.scheduler import SubmitRequest

    orphan = fake.submit(SubmitRequest(run_dir=store.paths.root, run_id=store.read().run_id, stage="a",
                                       resources=built.stage("a").resources, hold=True))
    apply.resume(store, built, fake)
    state = store.read()
    assert state.stages["a"].current.job_id == orphan
    per_stage = {}
    for request in fake.requests.values():
        per_stage[request.stage] = per_stage.get(request.stage, 0) + 1
    assert per_stage == {"a": 1, "b": 1, "c": 1, "d": 1} and not fake.held
    apply.resume(store, built, fake)  # idempotent
    assert len(fake.requests) == 4


def test_resume_replaces_a_job_that_cannot_run_and_its_dependents(run):
    """A held job whose files a killed submit never finished (repair() says it cannot run) is cancelled and its
    stage submitted again, with every held dependent whose afterok pointed at it; a repaired one is kept."""
    store, built, fake = run
    apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    first = {n: s.current.job_id for n, s in store.read().stages.items()}
    fake.held.update(first.values())  # as if the submit died before its release
    fake.repairs[first["b"]] = (False, "its pickle is missing")
    fake.repairs[first["d"]] = (True, "moved it into place")
    notes = apply.resume(store, built, fake)
    state = store.read()
    assert notes == [f"stage b: job {first['b']} cannot run (its pickle is missing): cancelled, submitted again",
                     f"stage d: job {first['d']} repaired: moved it into place"]
    assert sorted(fake.cancelled) == sorted([first["b"], first["c"]])
    assert [a.state for a in state.stages["b"].attempts] == [JobState.CANCELLED, JobState.PENDING]
    assert len(state.stages["c"].attempts) == 2 and len(state.stages["a"].attempts) == 1
    new_b = state.stages["b"].current.job_id
    assert fake.requests[state.stages["c"].current.job_id].after == (new_b,)
    assert fake.requests[new_b].after == (first["a"],) and fake.held <= set(fake.cancelled)  # the rest released


def test_cancel_stage_cancels_every_live_attempt_and_unrecorded_duplicates(run):
    from orchestrator.scheduler import SubmitRequest

    store, built, fake = run
    apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    old_b = store.read().stages["b"].current.job_id
    with store.update() as state:  # an older attempt still live (what two unlocked reruns left)
        state.stages["b"].attempts.append(state.stages["b"].attempts[0].model_copy(update={"job_id": "999"}))
    fake.jobs["999"] = fake.jobs[old_b]
    dup = fake.submit(SubmitRequest(run_dir=store.paths.root, run_id=store.read().run_id, stage="b",
                                    resources=built.stage("b").resources))
    ids = rerun_cancel.cancel(store, built, fake, stage="b")
    c_job = store.read().stages["c"].current.job_id
    assert sorted(ids) == sorted([old_b, "999", dup, c_job])
