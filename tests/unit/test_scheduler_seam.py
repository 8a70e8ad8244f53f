"""The Scheduler seam (issue 12 item 2): what Slurm's reason codes mean, how Slurm runs are grouped for one query,
and what a local job id looks like are each known to their backend only; status and the tables use the
backend's words (JobInfo.note), scheduler.query_group and scheduler.short_id."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator.layout import RunPaths
from orchestrator.scheduler import DEPENDENCY_FAILED, JobInfo, query_group, short_id
from orchestrator.scheduler.fake import FakeScheduler
from orchestrator.scheduler.slurm_reasons import explain
from orchestrator.states import JobState as S

REPO = Path(__file__).resolve().parents[2]
SLURM_WORDS = re.compile(r'"(Dependency|DependencyNeverSatisfied|JobHeldUser|BeginTime|slurm:)"|scontrol release')


def test_status_and_tables_hold_no_slurm_reason_codes() -> None:
    for name in ("status.py", "table.py", "sweepview.py", "live.py"):
        text = (REPO / "orchestrator" / name).read_text(encoding="utf-8")
        assert not SLURM_WORDS.search(text), name


def test_slurm_reason_codes_explained_by_the_backend() -> None:
    assert explain(JobInfo(S.PENDING, reason="Dependency"), "7") == "waiting for its dependencies"
    assert explain(JobInfo(S.RUNNING, reason="BeginTime"), "7") is None  # stale once it runs
    assert explain(JobInfo(S.CANCELLED, reason="DependencyNeverSatisfied"), "7") == DEPENDENCY_FAILED
    assert explain(JobInfo(S.CANCELLED, reason="JobHeldUser"), "7") is None  # says nothing about who cancelled
    assert explain(JobInfo(S.HELD, reason="JobHeldAdmin"), "7").startswith(
        "held by Slurm (JobHeldAdmin); release it: scontrol release 7")
    assert explain(JobInfo(S.PENDING, reason="QOSMaxJobsPerUserLimit"), "7") == "QOSMaxJobsPerUserLimit"


def test_query_keeps_the_code_and_adds_the_note() -> None:
    fake = FakeScheduler()
    fake.jobs["7"] = JobInfo(S.PENDING, reason="Dependency")
    info = fake.query(["7"])["7"]
    assert (info.reason, info.note) == ("Dependency", "waiting for its dependencies")


def test_query_group_and_short_ids(tmp_path: Path) -> None:
    RunPaths(tmp_path).plan.write_text(json.dumps({"cluster": {"name": "c", "accounting": "on"}}), encoding="utf-8")
    assert query_group("slurm", tmp_path) == "slurm:on"
    assert query_group("local", tmp_path) == "local"
    assert short_id("demo-20261201-1200-ab12/3") == "3"
    assert short_id("1234_5") == "1234_5"
