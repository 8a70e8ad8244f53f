"""The stage cache, `--set` and `rerun --spec` through the real CLI on the local backend (detached driver, real
job wrapper, real bash stages): issue 14 items 2-4."""

from __future__ import annotations

import json

from orchestrator import state
from orchestrator.states import JobState
from tests.cache_chain import cache_chain
from tests.helpers import latest_run, run_cli, wait_terminal



def submit(*argv: str) -> state.RunState:
    assert run_cli("submit", *argv) == 0
    run_dir = latest_run()
    wait_terminal(run_dir, timeout=120)
    return state.Store(run_dir).read()


def jobs_of(run: state.RunState) -> dict[str, list[str]]:
    return {n: [a.job_id for a in s.attempts if a.cached_from is None] for n, s in run.stages.items()}


def test_cache_set_and_rerun_spec_on_the_local_backend(write_spec, capsys):
    path = write_spec(cache_chain("cachechain"))
    first = submit(str(path))
    assert {s.state for s in first.stages.values()} == {JobState.COMPLETED}

    # Unchanged: nothing is submitted, every stage CACHED from the first run, and the chain is complete.
    capsys.readouterr()
    second = submit(str(path))
    assert {s.state for s in second.stages.values()} == {JobState.CACHED}
    assert jobs_of(second) == {"download": [], "finetune": [], "merge": []}
    assert f"merge: CACHED (from run {first.run_id}, job " in capsys.readouterr().err
    work2 = latest_run() / "work"
    assert run_cli("logs", second.run_id, "merge") == 0  # a CACHED stage shows the log of the job that made it
    shown = capsys.readouterr().out
    assert f"CACHED from run {first.run_id}" in shown and f"stage merge job {first.stages['merge'].current.job_id}" in shown
    assert (work2 / "merged" / "model").read_text() == "weights\n0.001\n"

    # One changed learning rate: finetune and merge run, download is reused; the run stores the effective spec.
    assert run_cli("render", str(path), "--set", "stages.finetune.params.lr=0.5") == 0
    out = capsys.readouterr().out
    assert "download  reuse  from run" in out and "finetune  run    no earlier run has key" in out
    assert "merge     run    it depends on finetune, which runs" in out
    third = submit(str(path), "--set", "stages.finetune.params.lr=0.5")
    assert third.stages["download"].state is JobState.CACHED
    assert [len(j) for j in jobs_of(third).values()] == [0, 1, 1]
    run3 = latest_run()
    assert (run3 / "work" / "merged" / "model").read_text() == "weights\n0.5\n"
    assert "lr: 0.5" in (run3 / "spec.yaml").read_text() and third.spec_overrides == ["stages.finetune.params.lr=0.5"]

    # rerun --spec with another edit: only the changed stage and its dependent run again, as spec version 2.
    edited = write_spec(cache_chain("cachechain", lr="0.25"), "edited.yaml")
    capsys.readouterr()
    assert run_cli("rerun", third.run_id, "--spec", str(edited)) == 0
    printed = capsys.readouterr().out
    assert "finetune: " in printed and "(spec 2;" in printed and "download" not in printed
    wait_terminal(run3)
    after = state.Store(run3).read()
    assert after.spec_version == 2 and (run3 / "spec.2.yaml").is_file()
    assert [a.spec_version for a in after.stages["finetune"].attempts] == [1, 2]
    assert (run3 / "work" / "merged" / "model").read_text() == "weights\n0.25\n"
    assert run_cli("status", third.run_id) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("finetune"))
    assert "spec 2" in row and "attempt 2" in row

    # Bad input: the error names the override, exit 1, no run created.
    runs_before = len(state.list_runs())
    assert run_cli("submit", str(path), "--set", "stages.finetune.resources.nodes=two") == 1
    err = capsys.readouterr().err
    assert "--set stages.finetune.resources.nodes=two: stages[1].resources.nodes" in err
    assert len(state.list_runs()) == runs_before
    # The plan records the keys; a dry run says what would happen and submits nothing.
    keys = [s["key"] for s in json.loads((run3 / "plan.json").read_text())["stages"]]
    assert all(len(k) == 64 for k in keys)
    assert run_cli("submit", str(edited), "--dry-run") == 0
    assert "dry run: 0 stage(s) would be submitted, 3 reused" in capsys.readouterr().out
    assert len(state.list_runs()) == runs_before
