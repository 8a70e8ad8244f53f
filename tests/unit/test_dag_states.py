from __future__ import annotations

import pytest

from orchestrator import dag
from orchestrator.scheduler.slurm import parse_sacct, parse_squeue
from orchestrator.states import JobState, from_slurm


def test_topological_and_downstream():
    parents = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    order = dag.topological(parents)
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
    assert dag.downstream(parents, ["b"]) == {"b", "d"}
    assert dag.find_cycle(parents) == []
    cycle = dag.find_cycle({"x": ["y"], "y": ["x"]})
    assert cycle[0] == cycle[-1] and set(cycle) == {"x", "y"}


@pytest.mark.parametrize("raw,expected", [
    ("COMPLETED", JobState.COMPLETED), ("CANCELLED by 0", JobState.CANCELLED), ("FAILED", JobState.FAILED),
    ("TIMEOUT", JobState.TIMEOUT), ("NODE_FAIL", JobState.NODE_FAIL), ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
    ("PREEMPTED", JobState.PREEMPTED), ("REQUEUED", JobState.PENDING), ("COMPLETING", JobState.RUNNING),
    ("BOOT_FAIL", JobState.NODE_FAIL), ("DEADLINE", JobState.TIMEOUT), ("RUNNING+", JobState.RUNNING),
    ("SOMETHING_NEW", JobState.UNKNOWN), ("", JobState.UNKNOWN),
])
def test_slurm_state_table(raw, expected):
    assert from_slurm(raw) is expected


def test_unknown_is_never_success():
    assert not JobState.UNKNOWN.ok and not JobState.UNKNOWN.terminal


def test_parse_sacct_rows():
    text = ("101|COMPLETED|0:0|dev1|2026-11-22T10:00:00|2026-11-22T10:00:05|None\n"
            "102|CANCELLED by 0|0:0|None assigned|Unknown|2026-11-22T10:00:06|Dependency\n"
            "103|FAILED|3:0|dev[1-2]|2026-11-22T10:00:00|2026-11-22T10:00:02|NonZeroExitCode\n"
            "104|OUT_OF_MEMORY|0:125|dev2|2026-11-22T10:00:00|2026-11-22T10:00:02|None\n")
    rows = parse_sacct(text)
    assert rows["101"].state is JobState.COMPLETED and rows["101"].exit_code == 0 and rows["101"].nodes == "dev1"
    assert rows["102"].state is JobState.CANCELLED and rows["102"].nodes is None and rows["102"].start is None
    assert rows["103"].exit_code == 3
    assert rows["104"].exit_code == 128 + 125


def test_parse_squeue_rows():
    rows = parse_squeue("201|PENDING|Dependency||N/A|0\n202|RUNNING|None|dev3|2026-11-22T10:00:00|2\n")
    assert rows["201"].state is JobState.PENDING and rows["201"].reason == "Dependency"
    assert rows["202"].nodes == "dev3" and rows["202"].reason is None
    assert (rows["201"].restarts, rows["202"].restarts) == (0, 2)  # RestartCnt, the last -O field


def test_parse_sacct_duplicates_are_restarts():
    """`sacct -D`: a job requeued after NODE_FAIL has one row per run, oldest first; the last row is the job now,
    the earlier ones are its restarts (why, when, where) — issue 13 item 5."""
    text = ("301|NODE_FAIL|0:0|dev2|2026-12-01T09:10:00|2026-12-01T09:12:03|None\n"
            "301|RUNNING|0:0|dev3|2026-12-01T09:12:40|Unknown|BeginTime\n")
    row = parse_sacct(text)["301"]
    assert row.state is JobState.RUNNING and row.restarts == 1 and row.nodes == "dev3"
    assert row.history == ("NODE_FAIL at 2026-12-01T09:12:03 on dev2",)


def test_running_job_never_shows_its_stale_pending_reason():
    from orchestrator.scheduler import JobInfo
    from orchestrator.state import Attempt
    from orchestrator.merge import merge
    from orchestrator.status import restart_note

    merged = merge(Attempt(job_id="301"), JobInfo(JobState.RUNNING, reason="BeginTime", restarts=1,
                                                   history=("NODE_FAIL at 09:12:03 on dev2",)), None)
    assert merged.reason is None and merged.exit_code is None
    assert restart_note(merged) == "restart 1 (NODE_FAIL at 09:12:03 on dev2)"
