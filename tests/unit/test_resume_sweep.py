"""`submit --resume` of a sweep whose submit died while its job arrays were being submitted, against the in-memory
FakeScheduler. It stands in for Slurm as tests/slurm/test_resume_sweep_slurm.py runs it for real: an array's tasks
are tagged with the base stage's name (`<run>.finetune`, slurm_submit.job_name of ArrayRequest.stage), as squeue
shows them. The kill is a BaseException raised where the process would die, after which the dead submit sends
nothing more (its release never happens, as with SIGKILL)."""

from __future__ import annotations

import os

import pytest

from orchestrator import apply, arrays, loader, plan
from orchestrator import state as statelib
from orchestrator.scheduler.fake import FakeScheduler

SWEEP = """
    name: sw
    stages:
      - {name: download, kind: command, run: "echo model > model.txt", outputs: [model.txt]}
      - {name: finetune, kind: command, params: {lr: 1}, run: "echo $PARAM_LR > adapter.txt", outputs: [adapter.txt]}
      - {name: merge, kind: command, run: "cat adapter.txt > merged.txt", outputs: [merged.txt]}
    sweep:
      grid:
        stages.finetune.params.lr: [1, 2, 3, 4]
"""
PER_VARIANT = [f"{base}@v{i}" for base in ("finetune", "merge") for i in range(4)]


class Killed(BaseException):
    """SIGKILL of the submit: not an Exception, so nothing catches it."""


@pytest.fixture
def run(write_spec, tmp_path):
    loaded = loader.load(write_spec(SWEEP))
    built = plan.build(loaded)
    return apply.create_run(loaded, built, tmp_path / "runs"), built, FakeScheduler()


def killed_submit(store, built, fake, monkeypatch, point, stage):
    """Submit every stage and die at fault point `point` of `stage` (orchestrator.state.faultpoint): the
    `array-accepted` point of arrays.py (submit_array returned, nothing recorded), `recorded`, or
    `sbatch-accepted` of a single job, which the Slurm executor fires and this fake's submit() is given here."""
    dead = []
    real_submit, real_release = fake.submit, fake.release

    def fault(at, name=""):
        if (at, name) == (point, stage):
            dead.append(True)
            raise Killed

    def submit(request):
        job_id = real_submit(request)
        fault("sbatch-accepted", request.stage)
        return job_id

    monkeypatch.setattr(statelib, "faultpoint", fault)
    monkeypatch.setattr(fake, "submit", submit)
    monkeypatch.setattr(fake, "release", lambda ids: None if dead else real_release(ids))
    with pytest.raises(Killed):
        apply.submit_stages(store, built, fake, {s.name for s in built.stages})
    monkeypatch.undo()  # the next process: a fresh `pipeline submit --resume`


def live(fake, job_ids):
    return [j for j in job_ids if not fake.jobs[j].state.terminal]


def test_resume_cancels_an_array_sbatch_accepted_but_never_recorded(run, monkeypatch):
    """Killed after the finetune array's sbatch, before its record: that array (held, never run) is cancelled
    and the variant stages submitted once; none is left held. The old code never found it (find_tagged was asked
    for `finetune@v0`.., the array is tagged `finetune`) and submitted finetune again beside it, held forever."""
    store, built, fake = run
    killed_submit(store, built, fake, monkeypatch, "array-accepted", "finetune")
    (orphan,) = [a for a, r in fake.arrays.items() if r.stage == "finetune"]
    orphan_tasks = [f"{orphan}_{i}" for i in range(4)]
    assert all(store.read().stages[n].current is None for n in PER_VARIANT)
    assert set(orphan_tasks) <= fake.held
    notes = apply.resume(store, built, fake)
    assert live(fake, fake.held) == []  # nothing of the run left held
    state = store.read()
    for name in ["download", *PER_VARIANT]:
        ids = [a.job_id for a in state.stages[name].attempts]
        assert len(ids) == 1 and ids[0] not in orphan_tasks, (name, ids)
        sent = [j for j, r in fake.requests.items() if r.stage == name]
        assert live(fake, sent) == ids, name  # one live job per stage: no duplicate
    assert sorted(fake.cancelled) == orphan_tasks
    assert notes == [f"stage finetune: job array {orphan} (4 tasks) was accepted by sbatch but never recorded (the "
                     "submit was interrupted): cancelled; its stages count as not submitted"]
    calls = fake.submit_calls
    assert apply.resume(store, built, fake) == [] and fake.submit_calls == calls  # idempotent


def test_resume_releases_an_array_recorded_before_the_kill(run, monkeypatch):
    """Killed after the finetune array was recorded, before the release: resume keeps those tasks and releases
    them (the array is the stages' attempt), submitting only merge."""
    store, built, fake = run
    killed_submit(store, built, fake, monkeypatch, "recorded", "finetune@v3")
    before = {n: s.current.job_id for n, s in store.read().stages.items() if s.current is not None}
    assert sorted(before) == ["download"] + [f"finetune@v{i}" for i in range(4)]
    assert apply.resume(store, built, fake) == [] and fake.cancelled == []
    state = store.read()
    assert all(state.stages[n].current.job_id == j for n, j in before.items())
    assert all(len(state.stages[n].attempts) == 1 for n in state.stages)
    assert live(fake, fake.held) == []


def test_resume_still_adopts_a_single_variant_job(run, monkeypatch):
    """MaxArraySize 3 cuts 4 variants into [v0-v2] and v3; v3's finetune is one job, tagged `finetune@v3`.
    Killed after its sbatch, before its record: resume adopts it (as any single orphan), submits it not twice."""
    store, built, fake = run
    fake.max_array = 3
    killed_submit(store, built, fake, monkeypatch, "sbatch-accepted", "finetune@v3")
    (orphan,) = [j for j, r in fake.requests.items() if r.stage == "finetune@v3"]
    assert "_" not in orphan and store.read().stages["finetune@v3"].current is None
    assert apply.resume(store, built, fake) == [] and fake.cancelled == []
    state = store.read()
    assert state.stages["finetune@v3"].current.job_id == orphan
    assert [r.stage for r in fake.requests.values()].count("finetune@v3") == 1
    assert fake.deps[state.stages["merge@v3"].current.job_id] == (orphan,)
    assert live(fake, fake.held) == []


def test_array_tags_are_the_base_stages_of_variant_stages(run):
    store, _, _ = run
    assert arrays.array_tags(store.read()) == ["finetune", "merge"]


def test_slurm_find_tagged_orders_array_tasks_oldest_first(tmp_path, monkeypatch):
    """SlurmScheduler.find_tagged over array task ids. squeue and sacct are stand-ins here (scripts on PATH that
    print rows as Slurm 22.05 prints `squeue -h -r -o %i|%j` and `sacct -X -n -P -o JobID,JobName`: one line per
    task, and sacct's `12_[0-2]` for a pending array); the real ones run in tests/slurm/test_resume_sweep_slurm.py.
    The old sort was key=int, which Python reads `9_100` as 9100 (PEP 515 digit separators): array 10 came before
    array 9's tasks 99 and 100, so the oldest was not first."""
    from orchestrator.scheduler.slurm import SlurmScheduler
    from orchestrator.spec import ClusterProfile

    rows = {"squeue": "9_100|r.finetune\n10_1|r.finetune\n9_99|r.finetune\n11|r.finetune@v3\n7|other.finetune\n",
            "sacct": "9_99|r.finetune\n12_[0-2]|r.finetune\n"}
    for tool, out in rows.items():
        script = tmp_path / tool
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/{tool}.argv\nprintf '{out}'\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    found = SlurmScheduler(None, ClusterProfile(name="dev")).find_tagged(tmp_path, "r", ["finetune@v3", "finetune"])
    assert found == {"finetune": ["9_99", "9_100", "10_1"], "finetune@v3": ["11"]}
    assert "--name r.finetune@v3,r.finetune" in (tmp_path / "squeue.argv").read_text()


def test_cancel_finds_an_unrecorded_array_and_spares_other_variants(run, monkeypatch):
    """`pipeline cancel` of a sweep killed mid-array: the unrecorded finetune array (tagged `finetune`, held forever
    otherwise) is cancelled with any cancel that reaches its stage (it holds no variant's work: never recorded,
    never run); the old code asked find_tagged for the variant stage names only. The recorded finetune array's
    other tasks carry the same `finetune` tag but belong to other variants: cancelling variant 1 spares them."""
    from orchestrator import rerun_cancel

    store, built, fake = run
    killed_submit(store, built, fake, monkeypatch, "array-accepted", "merge")
    (orphan,) = [a for a, r in fake.arrays.items() if r.stage == "merge"]
    state = store.read()
    finetunes = [state.stages[f"finetune@v{i}"].current.job_id for i in range(4)]
    orphan_tasks = [f"{orphan}_{i}" for i in range(4)]
    assert rerun_cancel.cancel(store, built, fake, "finetune@v1") == [finetunes[1], *orphan_tasks]
    assert not any(fake.jobs[j].state.terminal for j in finetunes[:1] + finetunes[2:])
    assert sorted(rerun_cancel.cancel(store, built, fake)) == sorted(
        [state.stages["download"].current.job_id, finetunes[0], *finetunes[2:]])
