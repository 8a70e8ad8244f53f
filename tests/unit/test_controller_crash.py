"""Issue 13 item 4 without a cluster: accounting vs controller disagreement, HELD jobs, drained nodes, holds
released by resume/rerun.

The Slurm side is exercised through the backend's own parsers and its `combine` on rows in the exact formats
`sacct -X -D -n -P -o JobIDRaw,State,ExitCode,NodeList,Start,End,Reason`, `squeue -h -r -O JobArrayID:|,State:|,Reason:|,NodeList:|,StartTime:|,RestartCnt:` (rows without the last
column read as restart 0) and
`sinfo -h -N -o %N|%T|%E` print on Slurm 22.05 (seen on the dev cluster, tests/slurm/test_controller_crash.py);
status and apply run against FakeScheduler, which stands in for the scheduler only.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from orchestrator import apply, loader, plan, rerun_cancel, status
from orchestrator.errors import PipelineError
from orchestrator.scheduler import CONTROLLER, SOURCE, JobInfo
from orchestrator.scheduler.fake import FakeScheduler
from orchestrator.scheduler.slurm import (
    ACCOUNTED_AS,
    CONTROLLER_DOWN,
    DISAGREEMENT,
    NODE_PROBLEM,
    _note_nodes,
    combine,
    parse_bad_nodes,
    parse_sacct,
    parse_squeue,
)
from orchestrator.states import JobState

S = JobState
CHAIN = """
    name: crash
    stages:
      - {name: a, kind: command, run: "true"}
      - {name: b, kind: command, run: "true"}
      - {name: c, kind: command, run: "true"}
"""


def sacct(*rows: str) -> dict[str, JobInfo]:
    return parse_sacct("".join(r + "\n" for r in rows))


def squeue(*rows: str) -> dict[str, JobInfo]:
    return parse_squeue("".join(r + "\n" for r in rows))


def test_completed_in_accounting_running_again_in_controller_is_a_disagreement():
    got = combine(["7"], sacct("7|COMPLETED|0:0|dev1|2026-12-01T10:00:00|2026-12-01T10:00:05|None"),
                  squeue("7|RUNNING|None|dev2|2026-12-01T10:01:00"))["7"]
    assert got.state is S.RUNNING and got.nodes == "dev2"
    assert "accounting says COMPLETED (ended 2026-12-01T10:00:05) but the controller shows it RUNNING again" \
        in got.extra[DISAGREEMENT]


def test_live_in_accounting_but_unknown_to_the_controller_is_a_disagreement():
    got = combine(["8"], sacct("8|RUNNING|0:0|dev1|2026-12-01T10:00:00|Unknown|None"), {})["8"]
    assert got.state is S.RUNNING and "the controller has no such job" in got.extra[DISAGREEMENT]
    assert "sacctmgr show runawayjobs" in got.extra[DISAGREEMENT]


@pytest.mark.parametrize("acct, ctld", [
    ("9|COMPLETED|0:0|dev1|2026-12-01T10:00:00|2026-12-01T10:00:05|None", "9|COMPLETING|None|dev1|N/A"),
    ("9|COMPLETED|0:0|dev1|2026-12-01T10:00:00|2026-12-01T10:00:05|None", "9|COMPLETED|None|dev1|N/A"),
    ("9|RUNNING|0:0|dev1|2026-12-01T10:00:00|Unknown|None", "9|COMPLETED|None|dev1|N/A"),  # slurmdbd lags
    ("9|NODE_FAIL|0:0|dev1|2026-12-01T10:00:00|2026-12-01T10:00:05|None", "9|PENDING|BeginTime||N/A"),
    ("9|PENDING|0:0|None assigned|Unknown|Unknown|Dependency", "9|PENDING|Dependency||N/A"),
])
def test_ordinary_differences_are_not_disagreements(acct, ctld):
    assert DISAGREEMENT not in combine(["9"], sacct(acct), squeue(ctld))["9"].extra


def test_controller_wins_for_live_jobs_and_keeps_accountings_history():
    acct = sacct("5|NODE_FAIL|0:0|dev4|2026-12-01T10:00:00|2026-12-01T10:01:00|None",
                 "5|RUNNING|0:0|dev1|2026-12-01T10:02:00|Unknown|None")
    got = combine(["5"], acct, squeue("5|PENDING|launch failed requeued held||N/A"))["5"]
    assert got.state is S.HELD and got.reason == "launch failed requeued held"
    assert got.restarts == 1 and got.history[0].startswith("NODE_FAIL")
    assert got.nodes == "dev1"  # where it last ran: the node a drained-node note looks at


@pytest.mark.parametrize("row", ["1|PENDING|JobHeldAdmin||N/A", "1|PENDING|JobHeldUser||N/A",
                                 "1|PENDING|launch failed requeued held||N/A", "1|REQUEUE_HOLD|None||N/A"])
def test_held_jobs_are_held(row):
    assert squeue(row)["1"].state is S.HELD and S.HELD.active and not S.HELD.terminal


def test_drained_node_is_named_with_slurms_reason():
    bad = parse_bad_nodes("dev1|idle|none\ndev2|drained|Duplicate jobid\ndev3|down*|Not responding\n")
    assert bad == {"dev2": "drained: Duplicate jobid", "dev3": "down: Not responding"}
    on = _note_nodes(JobInfo(S.HELD, nodes="dev[1-2]"), bad).extra[NODE_PROBLEM]
    assert on.startswith("node dev2 drained: Duplicate jobid") and "scontrol update nodename=dev2 state=resume" in on
    waiting = _note_nodes(JobInfo(S.PENDING, reason="ReqNodeNotAvail"), bad).extra[NODE_PROBLEM]
    assert "dev2" in waiting and "dev3" in waiting
    assert NODE_PROBLEM not in _note_nodes(JobInfo(S.RUNNING, nodes="dev1"), bad).extra


@pytest.fixture
def run(write_spec, tmp_path):
    loaded = loader.load(write_spec(CHAIN))
    built = plan.build(loaded)
    store = apply.create_run(loaded, built, tmp_path / "runs")
    fake = FakeScheduler()
    apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    ids = {r.stage: j for j, r in fake.requests.items()}
    return store, built, fake, ids


def refresh(store, fake):
    return status.refresh([store.paths.root], {"fake": fake, "local": fake})[0]


def _ended(store, fake, job_id, stage, ago_s):
    end = (datetime.now(timezone.utc) - timedelta(seconds=ago_s)).isoformat(timespec="seconds")
    fake.jobs[job_id] = JobInfo(S.COMPLETED, exit_code=0, nodes="node1", end=end)
    refresh(store, fake)
    assert store.read().stages[stage].state is S.COMPLETED


def test_status_notices_a_finished_stage_running_again(run):
    """The old code never asked about a stage it had seen COMPLETED, so it showed COMPLETED while the controller
    ran it again, with no warning (38 of 65 samples in the issue)."""
    store, _, fake, ids = run
    _ended(store, fake, ids["a"], "a", ago_s=30)
    fake.jobs[ids["a"]] = JobInfo(S.RUNNING, nodes="node2", extra={  # as combine answers: the controller's word
        SOURCE: CONTROLLER, DISAGREEMENT: "accounting says COMPLETED but the controller shows it RUNNING again"})
    view = refresh(store, fake)
    a = view.state.stages["a"]
    assert a.state is S.RUNNING and a.current.reason.startswith(status.DISPUTED + ": ")
    assert "shows it RUNNING again" in a.current.reason
    assert view.warning.count("\n") == 0 and "disagree about stage(s) a" in view.warning
    assert store.read().stages["a"].state is S.RUNNING  # recorded: rerun must not start a second copy
    with pytest.raises(PipelineError, match="still queued or running"):
        rerun_cancel.rerun(store, plan.build(loader.load(store.paths.spec_copy)), fake, stage="a")


def test_old_finished_stages_are_not_asked_about_again(run):
    store, _, fake, ids = run
    _ended(store, fake, ids["a"], "a", ago_s=status.RECHECK_S + 60)
    fake.jobs[ids["a"]] = JobInfo(S.RUNNING, extra={DISAGREEMENT: "x"})
    assert refresh(store, fake).state.stages["a"].state is S.COMPLETED


def test_held_job_shows_held_with_reason_and_release_command(run):
    store, _, fake, ids = run
    fake.jobs[ids["b"]] = JobInfo(S.HELD, reason="launch failed requeued held", extra={
        NODE_PROBLEM: "node dev2 drained: Duplicate jobid (an admin's fix: scontrol update nodename=dev2 "
                      "state=resume)"})
    b = refresh(store, fake).state.stages["b"]
    assert b.state is S.HELD and "waiting for its dependencies" not in b.current.reason
    assert b.current.reason.startswith("held by Slurm (launch failed requeued held); release it: "
                                       f"scontrol release {ids['b']}")
    assert "node dev2 drained: Duplicate jobid" in b.current.reason


def test_resume_releases_holds_on_the_runs_own_jobs_only(run, write_spec, tmp_path):
    store, built, fake, ids = run
    fake.jobs[ids["b"]] = JobInfo(S.HELD, reason="JobHeldAdmin")
    fake.jobs["999"] = JobInfo(S.HELD, reason="JobHeldAdmin")  # someone else's job on the same cluster
    refresh(store, fake)
    fake.released.clear()
    notes = apply.resume(store, built, fake)
    assert f"stage b: released job {ids['b']} (held: JobHeldAdmin)" in notes
    assert "999" not in fake.released and fake.jobs["999"].state is S.HELD
    assert fake.jobs[ids["b"]].state is S.PENDING


def test_rerun_releases_holds_and_says_so(run):
    store, built, fake, ids = run
    fake.finish(ids["a"], S.FAILED, exit_code=1)  # b and c cancelled as dependents
    fake.jobs[ids["b"]] = JobInfo(S.HELD, reason="JobHeldUser")  # a held attempt the state still calls live
    notes: list[str] = []
    with pytest.raises(PipelineError, match=f"released job {ids['b']}"):
        rerun_cancel.rerun(store, built, fake, stage="b", notes=notes)  # b is queued again once released
    assert notes == [f"stage b: released job {ids['b']} (held: JobHeldUser)"] and ids["b"] in fake.released


def test_a_held_job_that_cannot_run_is_not_released(run):
    store, built, fake, ids = run
    fake.jobs[ids["c"]] = JobInfo(S.HELD, reason="JobHeldAdmin")
    fake.repairs[ids["c"]] = (False, "its submitit pickle is missing")
    fake.released.clear()
    notes = apply.release_holds(store, fake)
    assert ids["c"] not in fake.released and "cannot run (its submitit pickle is missing)" in notes[0]


def test_controller_down_is_said_once_and_accounting_still_answers(run):
    """slurmctld killed: squeue fails while sacct answers. One warning line, states from accounting (the new
    squeue call must not turn every stage UNKNOWN)."""
    store, _, fake, ids = run
    fake.jobs[ids["a"]] = JobInfo(S.RUNNING, nodes="node1", extra={CONTROLLER_DOWN: "Unable to contact slurm "
                                                                   "controller (connect failure)"})
    view = refresh(store, fake)
    assert view.state.stages["a"].state is S.RUNNING and view.state.stages["b"].state is S.PENDING
    assert view.warning.startswith("the controller (slurmctld) did not answer (Unable to contact")


def test_running_in_accounting_but_held_in_the_controller_is_a_disagreement():
    """The issue's crash: the running stage comes back "launch failed requeued held" with no requeue in accounting."""
    got = combine(["4"], sacct("4|RUNNING|0:0|dev2|2026-12-01T10:00:00|Unknown|None"),
                  squeue("4|PENDING|launch failed requeued held||N/A"))["4"]
    assert got.state is S.HELD and got.extra[DISAGREEMENT] == "accounting says RUNNING but the controller shows it HELD"
    assert combine(["4"], sacct("4|PENDING|0:0|None assigned|Unknown|Unknown|None"),  # accounting lags a start
                   squeue("4|RUNNING|None|dev2|2026-12-01T10:00:00"))["4"].extra.get(DISAGREEMENT) is None


def test_a_requeue_accounting_has_not_recorded_yet_is_no_disagreement():
    """CI, under load: a node failure's requeue is at once in the controller (PENDING, RestartCnt 1) while slurmdbd
    still has the job RUNNING. That is accounting lagging, not a controller reloaded from an older state: no
    dispute, the restart counted, the lost node kept (its down-node note needs it) and the note says requeued.
    The same rows with the controller's count unchanged are the older-state reload, still disputed."""
    from orchestrator.scheduler.slurm_reasons import explained

    acct = sacct("9|RUNNING|0:0|dev4|2026-12-01T10:00:00|Unknown|None")
    got = explained(combine(["9"], acct, squeue("9|PENDING|None||2026-12-01T10:01:00|1"))["9"], "9")
    assert DISAGREEMENT not in got.extra and got.state is S.PENDING and got.restarts == 1 and got.nodes == "dev4"
    assert got.note == "requeued (node failure or preemption); waiting to run again"
    older = combine(["9"], acct, squeue("9|PENDING|None||N/A|0"))["9"]
    assert older.extra[DISAGREEMENT] == "accounting says RUNNING but the controller shows it PENDING"


def test_accounting_alone_never_moves_a_seen_start_back_to_pending():
    """CI, under load: slurmctld killed -9 a second after stage b started; slurmdbd had not heard of the start, so
    accounting alone says PENDING. Status saw it RUNNING and keeps that, saying why; a restart accounting does
    know of (requeued before the crash) is news and is shown."""
    from orchestrator.merge import ACCOUNTING_BEHIND, merge
    from orchestrator.state import Attempt

    seen = Attempt(job_id="5", state=S.RUNNING, nodes="dev1", start="2026-12-01T10:00:00")
    down = {CONTROLLER_DOWN: "Unable to contact slurm controller (connect failure)"}
    got = merge(seen, JobInfo(S.PENDING, reason="Dependency", note="waiting for its dependencies", extra=down), None)
    assert (got.state, got.nodes, got.start, got.reason) == (S.RUNNING, "dev1", "2026-12-01T10:00:00", ACCOUNTING_BEHIND)
    requeued = merge(seen, JobInfo(S.PENDING, restarts=1, history=("NODE_FAIL at 10:00:09 on dev1",), extra=down), None)
    assert requeued.state is S.PENDING and requeued.restarts == 1
    with_ctld = merge(seen, JobInfo(S.PENDING, note="waiting for its dependencies"), None)
    assert with_ctld.state is S.PENDING  # both sources answered: combine judged it (disputed or requeued)


def test_an_end_slurmdbd_has_not_recorded_yet_stands():
    """CI under load (tests/slurm audit): the controller says a job ended while slurmdbd has no row, or still says
    PENDING or RUNNING. The controller's answer stands, with its EndTime (read only once a job has ended: before,
    squeue's EndTime is the expected end), never a step back to "waiting for its dependencies"."""
    from orchestrator.scheduler.slurm_reasons import explained

    ended = "9|COMPLETED|None|dev1|2026-12-01T10:00:00|0|2026-12-01T10:00:05"
    assert squeue("9|RUNNING|None|dev1|2026-12-01T10:00:00|0|2026-12-01T11:00:00")["9"].end is None
    for acct in ({}, sacct("9|PENDING|0:0|None assigned|Unknown|Unknown|Dependency"),
                 sacct("9|RUNNING|0:0|dev1|2026-12-01T10:00:00|Unknown|None")):
        got = explained(combine(["9"], acct, squeue(ended))["9"], "9")
        assert (got.state, got.end, got.nodes, got.note) == (S.COMPLETED, "2026-12-01T10:00:05", "dev1", None), acct
        assert DISAGREEMENT not in got.extra
    failed = combine(["9"], sacct("9|RUNNING|0:0|dev1|2026-12-01T10:00:00|Unknown|None"),
                     squeue("9|FAILED|NonZeroExitCode|dev1|2026-12-01T10:00:00|0|2026-12-01T10:00:05"))["9"]
    assert failed.state is S.FAILED
    done = combine(["9"], sacct("9|COMPLETED|0:0|dev1|2026-12-01T10:00:00|2026-12-01T10:00:05|None"),
                   squeue("9|COMPLETING|None|dev1|2026-12-01T10:00:00|0|2026-12-01T10:00:05"))["9"]
    assert done.state is S.COMPLETED and done.exit_code == 0  # accounting has it: its exit code wins


def test_a_start_only_for_a_job_that_got_an_allocation():
    """CI under load (tests/slurm/test_report_slurm.py): a queued job's squeue StartTime is the scheduler's
    expected start, and a job cancelled while queued has its cancel time as Start in squeue and sacct (rows as the
    22.05 test cluster printed them). Taken as a start, the report drew a queued-then-ran timeline for a job that
    never ran, and its outcome "pending"."""
    assert squeue("9|PENDING|Priority||2026-12-01T11:00:00|0|2026-12-01T12:00:00")["9"].start is None
    cancelled = squeue("9|CANCELLED|Dependency||2026-12-01T15:59:48|0|2026-12-01T15:59:48")["9"]
    assert (cancelled.start, cancelled.end) == (None, "2026-12-01T15:59:48")
    assert sacct("9|CANCELLED by 0|0:0|None assigned|2026-12-01T15:59:48|2026-12-01T15:59:48|None")["9"].start is None
    assert squeue("9|RUNNING|None|dev1|2026-12-01T10:00:00|0|2026-12-01T11:00:00")["9"].start == "2026-12-01T10:00:00"


def test_an_end_known_only_to_the_job_record_is_kept():
    """Without any end time from the scheduler, the job's own end record gives it (else ELAPSED stays empty and
    the stage, never re-checked, keeps end null for good)."""
    from orchestrator.merge import merge
    from orchestrator.state import Attempt

    got = merge(Attempt(job_id="9", state=S.RUNNING, start="2026-12-01T10:00:00"), JobInfo(S.COMPLETED),
                {"exit_code": 0, "end": "2026-12-01T10:00:05"})
    assert got.state is S.COMPLETED and got.end == "2026-12-01T10:00:05"


def test_accounting_alone_calling_a_finished_stage_running_does_not_revive_it(run):
    """A stage status saw end (here: from its record, accounting down) that slurmdbd, catching up, still calls
    RUNNING while the controller no longer lists it: a lag or a runaway record, not the controller running it
    again. The old code persisted RUNNING, so rerun refused and cancel targeted the finished job."""
    store, _, fake, ids = run
    _ended(store, fake, ids["a"], "a", ago_s=30)
    fake.jobs[ids["a"]] = combine([ids["a"]], sacct(f"{ids['a']}|RUNNING|0:0|dev1|2026-12-01T10:00:00|Unknown|None"),
                                  {})[ids["a"]]
    assert DISAGREEMENT in fake.jobs[ids["a"]].extra  # accounting's word alone, disputed
    refresh(store, fake)
    assert store.read().stages["a"].state is S.COMPLETED


def test_a_held_job_accounting_calls_completed_is_not_released(run):
    """Releasing it would run a finished stage a second time (a controller restarted from an older state)."""
    store, _, fake, ids = run
    fake.jobs[ids["a"]] = JobInfo(S.HELD, reason="JobHeldUser", extra={ACCOUNTED_AS: "COMPLETED"})
    fake.released.clear()
    notes = apply.release_holds(store, fake)
    assert ids["a"] not in fake.released and "accounting says it COMPLETED: not released" in notes[0]
