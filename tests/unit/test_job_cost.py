"""What the job wrapper spends per task (issue 14 item 7: a 64-variant sweep's 385 tasks each paid ~0.3 s CPU
in notify.run_outcome, a glob and read of every stage's job record, whether or not the spec has `notify:`).

Real run directories written by apply.create_run; only notify.run_outcome is wrapped, to count its calls."""

from __future__ import annotations

import pytest

from orchestrator import apply, loader, notify, plan

SWEEP = """
    name: sw
    {notify}
    stages:
      - {{name: s0, kind: command, run: "true"}}
      - {{name: s1, kind: command, params: {{v: 0}}, run: "true"}}
    sweep:
      grid:
        stages.s1.params.v: [0, 1, 2, 3]
"""


@pytest.fixture
def outcomes(monkeypatch):
    calls: list[object] = []
    real = notify.run_outcome

    def counted(paths):
        calls.append(paths)
        return real(paths)

    monkeypatch.setattr(notify, "run_outcome", counted)
    return calls


def stage_end(write_spec, tmp_path, notify_block: str) -> None:
    loaded = loader.load(write_spec(SWEEP.format(notify=notify_block)))
    store = apply.create_run(loaded, plan.build(loaded), tmp_path / "runs")
    log = tmp_path / "stage.log"
    notify.stage_ended(store.paths, "s1@v0", "7_0", 0, None, False, log)


def test_no_notify_reads_no_stage_record_at_stage_end(write_spec, tmp_path, outcomes):
    stage_end(write_spec, tmp_path, "")
    assert outcomes == []  # old code: run_outcome (every stage's records) at every stage end


def test_run_ended_asked_for_still_checks_the_run(write_spec, tmp_path, outcomes):
    (tmp_path / "hook").write_text("http://127.0.0.1:9/x\n")
    (tmp_path / "hook").chmod(0o600)
    block = f"secrets: {{HOOK: {{file: {tmp_path / 'hook'}}}}}\n    notify: {{webhook: HOOK, events: [run_ended]}}"
    stage_end(write_spec, tmp_path, block)
    assert len(outcomes) == 1


def test_only_stage_failed_asked_for_skips_the_run_check(write_spec, tmp_path, outcomes):
    (tmp_path / "hook").write_text("http://127.0.0.1:9/x\n")
    (tmp_path / "hook").chmod(0o600)
    block = f"secrets: {{HOOK: {{file: {tmp_path / 'hook'}}}}}\n    notify: {{webhook: HOOK, events: [stage_failed]}}"
    stage_end(write_spec, tmp_path, block)
    assert outcomes == []
