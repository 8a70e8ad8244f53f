"""The stage cache, `--set` and `rerun --spec` on the real Slurm test cluster (issue 14 items 2-4, 6): real sbatch,
real job wrapper writing manifests on the compute nodes, real sacct/squeue."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator import state
from orchestrator.states import JobState
from tests.cache_chain import cache_chain
from tests.helpers import latest_run, run_cli, wait_terminal

pytestmark = pytest.mark.slurm
CLUSTER = '{name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:10:00"}}'


def jobs_named(run_id: str) -> list[str]:
    """Jobs the controller knows for a run (tagged <run id>.<stage>), finished ones included."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%j"], capture_output=True, text=True,
                         check=True).stdout.split()
    return sorted(n.split(".", 1)[1] for n in out if n.startswith(run_id + "."))


def submit(*argv: str) -> tuple[state.RunState, dict[str, JobState]]:
    assert run_cli("submit", *argv) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=240)
    return state.Store(run_dir).read(), states


def real_jobs(run: state.RunState) -> dict[str, int]:
    return {n: sum(a.cached_from is None for a in s.attempts) for n, s in run.stages.items()}


def test_cache_across_runs_on_slurm(slurm_cluster, write_spec, capsys):
    path = write_spec(cache_chain("cached", CLUSTER, evaluate=True))
    first, states = submit(str(path))
    assert set(states.values()) == {JobState.COMPLETED}
    assert jobs_named(first.run_id) == ["download", "evaluate", "finetune", "merge"]
    # The job wrapper on the compute node recorded each stage's outputs for later runs.
    log = (latest_run() / "logs").glob("finetune.*.log")
    assert "outputs recorded for reuse" in next(log).read_text()

    # 1. The same chain again: 0 jobs submitted, every stage CACHED from the first run, run complete.
    second, states = submit(str(path))
    assert set(states.values()) == {JobState.CACHED}
    assert jobs_named(second.run_id) == [] and sum(real_jobs(second).values()) == 0
    assert second.stages["merge"].current.cached_from.job_id == first.stages["merge"].current.job_id
    assert (latest_run() / "work" / "merged" / "model").read_text() == "weights\n0.001\n"

    # 2. One finetune setting changed with --set: finetune and its dependents run, download is reused.
    third, states = submit(str(path), "--set", "stages.finetune.params.lr=0.5")
    assert states == {"download": JobState.CACHED, "finetune": JobState.COMPLETED, "merge": JobState.COMPLETED,
                      "evaluate": JobState.COMPLETED}
    assert jobs_named(third.run_id) == ["evaluate", "finetune", "merge"]
    assert (latest_run() / "work" / "merged" / "model").read_text() == "weights\n0.5\n"

    # 3. A cached output deleted in the source run: that stage (and what depends on it) runs again.
    (state.find_run(first.run_id) / "work" / "ckpt" / "adapter").unlink()
    capsys.readouterr()
    assert run_cli("submit", str(path), "--dry-run") == 0
    dry = capsys.readouterr().out
    assert "dry run: 3 stage(s) would be submitted, 1 reused" in dry and "adapter is gone" in dry
    fourth, states = submit(str(path))
    assert real_jobs(fourth) == {"download": 0, "finetune": 1, "merge": 1, "evaluate": 1}
    assert set(states.values()) == {JobState.CACHED, JobState.COMPLETED}

    # 4. rerun --spec: the edited file changes finetune; finetune, merge and evaluate run again as spec 2.
    edited = write_spec(cache_chain("cached", CLUSTER, evaluate=True, lr="0.125"), "edited.yaml")
    run_dir = state.find_run(fourth.run_id)
    assert run_cli("rerun", fourth.run_id, "--spec", str(edited)) == 0
    states = wait_terminal(run_dir, timeout=240)
    after = state.Store(run_dir).read()
    assert after.spec_version == 2 and [a.spec_version for a in after.stages["finetune"].attempts] == [1, 2]
    assert states["download"] is JobState.CACHED and len(after.stages["download"].attempts) == 1
    assert all(states[n] is JobState.COMPLETED for n in ("finetune", "merge", "evaluate"))
    assert (run_dir / "work" / "merged" / "model").read_text() == "weights\n0.125\n"

    # 5. Bad --set: refused before anything is submitted, naming the override.
    runs = len(state.list_runs())
    capsys.readouterr()
    assert run_cli("submit", str(path), "--set", "stages.nosuch.params.lr=1") == 1
    assert "--set stages.nosuch.params.lr=1: stages has no entry named 'nosuch'" in capsys.readouterr().err
    assert len(state.list_runs()) == runs
