"""`submit --resume` of a sweep whose submit was SIGKILLed between an array's sbatch and its state write, on the
real Slurm 22.05 test cluster (the test-only fault point `array-accepted:<base stage>` of orchestrator/arrays.py:
sbatch answered and submit_array returned, the state file knows nothing of the array).

The array is held (every job a submit sends is, until the final release, which a killed submit never reaches),
so it never ran. The old resume never found it (it asked squeue for `<run>.finetune@v0`.., the array is named
`<run>.finetune`) and submitted the stage again beside it, leaving it held in the queue for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from orchestrator import state
from orchestrator.states import JobState
from tests.conftest import REPO
from tests.helpers import wait_terminal

pytestmark = pytest.mark.slurm
S = JobState
CLUSTER = '{name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:10:00"}}'
SPEC = f"""name: rsweep
cluster: {CLUSTER}
stages:
  - {{name: download, kind: command, run: "sleep 1; echo weights > model.txt", outputs: [model.txt]}}
  - {{name: finetune, kind: command, params: {{lr: 1}}, run: "sleep 1; echo $PARAM_LR > adapter.txt",
      outputs: [adapter.txt]}}
  - {{name: merge, kind: command, run: "sleep 1; cat adapter.txt > merged.txt", outputs: [merged.txt]}}
sweep:
  grid:
    stages.finetune.params.lr: [1, 2, 3]
"""
VARIANT_STAGES = [f"{b}@v{i}" for b in ("finetune", "merge") for i in range(3)]


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, cwd=REPO)


def queued(run_id: str) -> dict[str, tuple[str, str]]:
    """Every job squeue knows (recently ended ones too, MinJobAge 300 s) named after this run: id -> (name, state);
    -r: one line per array task."""
    names = [f"{run_id}.{n}" for n in ("download", "finetune", "merge", *VARIANT_STAGES)]
    out = subprocess.run(["squeue", "--states=all", "-h", "-r", "-o", "%i|%j|%T", "--name", ",".join(names)],
                         capture_output=True, text=True, check=True).stdout
    return {job: (name, st) for job, name, st in (line.split("|") for line in out.splitlines())}


@pytest.mark.parametrize("base", ["finetune", "merge"])
def test_resume_after_kill_between_array_sbatch_and_record(slurm_cluster, write_spec, pipeline_home, base):
    path = write_spec(SPEC)
    killed = _cli("submit", str(path), env={state.FAULT_ENV: f"array-accepted:{base}:kill"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [run_dir] = [p for p in (pipeline_home / "runs").iterdir() if not p.name.startswith(".")]
    saved = state.Store(run_dir).read()
    recorded = {a.job_id for s in saved.stages.values() for a in s.attempts}
    orphan = {j for j, (name, _) in queued(run_dir.name).items() if name == f"{run_dir.name}.{base}"}
    assert len(orphan) == 3 and not orphan & recorded  # one array of 3 tasks, unknown to the state file
    assert all(queued(run_dir.name)[j][1] == "PENDING" for j in orphan)  # held, never ran
    assert all(saved.stages[f"{base}@v{i}"].current is None for i in range(3))

    resumed = _cli("submit", "--resume", run_dir.name)
    assert resumed.returncode == 0, resumed.stderr
    array = next(iter(orphan)).partition("_")[0]
    assert f"stage {base}: job array {array} (3 tasks) was accepted by sbatch but never recorded" in resumed.stderr
    assert wait_terminal(run_dir, timeout=180) == {n: S.COMPLETED for n in ["download", *VARIANT_STAGES]}
    saved = state.Store(run_dir).read()
    assert all(len(s.attempts) == 1 for s in saved.stages.values())
    current = {s.current.job_id for s in saved.stages.values()}
    jobs = queued(run_dir.name)
    others = {j: st for j, (_, st) in jobs.items() if j not in orphan and j != array}
    assert others == {j: "COMPLETED" for j in current}  # no duplicate, nothing of the run held or pending
    # the cancelled array: its tasks, or once every task is cancelled its one record `<array id>`
    assert {st for j, (_, st) in jobs.items() if j in orphan or j == array} == {"CANCELLED"}, jobs
    again = _cli("submit", "--resume", run_dir.name)  # idempotent: the cancelled array is not cancelled twice
    assert again.returncode == 0 and "job array" not in again.stderr, again.stderr
    assert queued(run_dir.name) == jobs
    merged = [(run_dir / "work" / "variants" / f"v{i}" / "merged.txt").read_text() for i in range(3)]
    assert merged == ["1\n", "2\n", "3\n"]


def test_resume_after_kill_once_an_array_is_recorded(slurm_cluster, write_spec, pipeline_home):
    """Killed right after the finetune array's state write, before the release: the array is the stages'
    attempt, held. Resume releases it (`scontrol release <array id>`) and submits merge once per variant."""
    killed = _cli("submit", str(write_spec(SPEC)), env={state.FAULT_ENV: "recorded:finetune@v0:kill"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [run_dir] = [p for p in (pipeline_home / "runs").iterdir() if not p.name.startswith(".")]
    before = {n: s.current.job_id for n, s in state.Store(run_dir).read().stages.items() if s.current}
    assert sorted(before) == ["download", "finetune@v0", "finetune@v1", "finetune@v2"]
    resumed = _cli("submit", "--resume", run_dir.name)
    assert resumed.returncode == 0 and "job array" not in resumed.stderr, resumed.stderr
    assert wait_terminal(run_dir, timeout=180) == {n: S.COMPLETED for n in ["download", *VARIANT_STAGES]}
    saved = state.Store(run_dir).read()
    assert all(saved.stages[n].current.job_id == j for n, j in before.items())
    assert all(len(s.attempts) == 1 for s in saved.stages.values())
    assert {j: st for j, (_, st) in queued(run_dir.name).items()} == {
        s.current.job_id: "COMPLETED" for s in saved.stages.values()}
