"""Sweeps (issue 14 item 5) against the in-memory FakeScheduler: expansion, shared stages, arrays chained per
variant with aftercorr, the MaxArraySize split, rerun of one variant, the status matrix, and bad input."""

from __future__ import annotations

import json

import pytest

from orchestrator import apply, loader, plan, rerun_cancel, status, sweepview
from orchestrator.errors import PipelineError, SpecError
from orchestrator.scheduler.fake import FakeScheduler
from orchestrator.scheduler.slurm import (
    array_id,
    expand_array_ids,
    parse_max_array_size,
    parse_sacct,
    parse_squeue,
)
from orchestrator.states import JobState

SWEEP = """
    name: sw
    stages:
      - {name: download, kind: command, run: "echo model > model.txt", outputs: [model.txt]}
      - name: finetune
        kind: command
        params: {lr: 1, steps: 10}
        run: "cat model.txt; echo $PARAM_LR > adapter.txt"
        outputs: [adapter.txt]
      - {name: merge, kind: command, run: "cat adapter.txt > merged.txt", outputs: [merged.txt]}
    sweep:
      grid:
        stages.finetune.params.lr: [1, 2]
        stages.finetune.params.steps: [10, 20]
"""


def build(write_spec, text=SWEEP):
    loaded = loader.load(write_spec(text))
    return loaded, plan.build(loaded)


@pytest.fixture
def run(write_spec, tmp_path):
    loaded, built = build(write_spec)
    store = apply.create_run(loaded, built, tmp_path / "runs")
    return store, built, FakeScheduler()


def submit_all(store, built, fake):
    return apply.submit_stages(store, built, fake, {s.name for s in built.stages})


def job_of(store, name):
    return store.read().stages[name].current.job_id


def test_grid_expands_shares_download_and_names_variant_stages(write_spec):
    _, built = build(write_spec)
    names = [s.name for s in built.stages]
    assert names[0] == "download" and names.count("download") == 1
    assert sorted(names[1:5]) == [f"finetune@v{i}" for i in range(4)]
    assert [v["values"] for v in built.variants] == [
        {"stages.finetune.params.lr": lr, "stages.finetune.params.steps": st} for lr in (1, 2) for st in (10, 20)]
    v3 = built.stage("finetune@v3")
    assert v3.after == ("download",) and v3.outputs == ("variants/v3/adapter.txt",) and v3.base == "finetune"
    assert built.stage("merge@v3").after == ("finetune@v3",)
    assert "export PARAM_LR=2" in v3.script and "export PARAM_STEPS=20" in v3.script
    # the variant works in its own folder, with download's declared output linked in
    assert 'WORKDIR="$WORKDIR/variants/"v3' in v3.script and "model.txt" in v3.script.split("--- user")[0]
    assert "variants/" not in built.stage("download").script
    # merge does not read lr itself, but it merges each variant's adapter: it depends on a swept stage
    assert built.stage("merge@v0").key != built.stage("merge@v1").key


def test_plan_json_round_trip_keeps_variants(run):
    store, built, _ = run
    saved = plan.load_saved(json.loads(store.paths.plan.read_text()), store.paths.root / "scripts")
    assert saved.variants == built.variants and saved.stage("merge@v2").variant == "v2"
    assert [s.name for s in saved.stages] == [s.name for s in built.stages]


def test_listed_variants_with_names(write_spec):
    text = SWEEP.split("    sweep:")[0] + """    sweep:
      throttle: 2
      variants:
        - {name: low, stages.finetune.params.lr: 1}
        - {name: high, stages.finetune.params.lr: 5}
"""
    _, built = build(write_spec, text)
    assert [v["name"] for v in built.variants] == ["low", "high"] and built.throttle == 2
    assert "export PARAM_LR=5" in built.stage("finetune@high").script


def test_one_array_per_stage_chained_per_variant(run):
    store, built, fake = run
    ids = submit_all(store, built, fake)
    assert fake.submit_calls == 3 and len(ids) == 9  # download, one finetune array, one merge array
    download = job_of(store, "download")
    finetune = [job_of(store, f"finetune@v{i}") for i in range(4)]
    merge = [job_of(store, f"merge@v{i}") for i in range(4)]
    assert len({j.split("_")[0] for j in finetune}) == 1 and finetune == [f"{finetune[0][:-2]}_{i}" for i in range(4)]
    (ft_array,) = [r for r in fake.arrays.values() if r.stage == "finetune"]
    (mg_array,) = [r for r in fake.arrays.values() if r.stage == "merge"]
    assert ft_array.after == (download,) and ft_array.corr == ()
    assert mg_array.after == () and mg_array.corr == (tuple(finetune),)
    assert all(fake.deps[m] == (f,) for m, f in zip(merge, finetune))
    assert ft_array.hold and not fake.held  # submitted held, released together


def test_failed_variant_cancels_only_its_own_merge_then_rerun_variant(run):
    store, built, fake = run
    submit_all(store, built, fake)
    for name in ("download", "finetune@v0", "finetune@v2", "finetune@v3", "merge@v0", "merge@v2", "merge@v3"):
        fake.finish(job_of(store, name), JobState.COMPLETED)
    fake.finish(job_of(store, "finetune@v1"), JobState.FAILED, exit_code=3)
    state = status.refresh([store.paths.root], {"fake": fake, "local": fake})[0].state
    assert state.stages["merge@v1"].state is JobState.CANCELLED
    assert sum(s.state is JobState.COMPLETED for s in state.stages.values()) == 7
    before = fake.submit_calls
    submitted = rerun_cancel.rerun(store, built, fake, variant="v1")
    assert set(submitted) == {"finetune@v1", "merge@v1"} and fake.submit_calls == before + 2
    assert fake.deps[submitted["merge@v1"]] == (submitted["finetune@v1"],)  # afterok: one job each
    assert fake.deps[submitted["finetune@v1"]] == ()  # download COMPLETED: no dependency (purged jobs)
    with pytest.raises(PipelineError, match="no variant 'v9'"):
        rerun_cancel.rerun(store, built, fake, variant="v9")
    with pytest.raises(PipelineError, match="shared by every variant"):
        rerun_cancel.rerun(store, built, fake, stage="download", variant="1")


def test_rerun_variant_by_index_and_stage(run):
    store, built, fake = run
    submit_all(store, built, fake)
    for job_id in list(fake.jobs):
        fake.finish(job_id, JobState.COMPLETED)
    status.refresh([store.paths.root], {"fake": fake, "local": fake})
    assert set(rerun_cancel.rerun(store, built, fake, stage="merge", variant="2")) == {"merge@v2"}


def test_split_above_max_array_size_pairs_chunks(run):
    """MaxArraySize 3 and 4 variants: each per-variant stage is cut at the same boundaries ([v0-v2], [v3]), so
    chunk k of merge pairs with chunk k of finetune; the lone v3 is one job with afterok on its own finetune."""
    store, built, fake = run
    fake.max_array = 3
    submit_all(store, built, fake)
    finetune = [job_of(store, f"finetune@v{i}") for i in range(4)]
    merge = [job_of(store, f"merge@v{i}") for i in range(4)]
    assert fake.submit_calls == 5  # download, finetune[0-2], finetune v3, merge[0-2], merge v3
    (mg_array,) = [r for r in fake.arrays.values() if r.stage == "merge"]
    assert mg_array.tasks == ("merge@v0", "merge@v1", "merge@v2") and mg_array.corr == (tuple(finetune[:3]),)
    assert "_" not in finetune[3] and fake.deps[merge[3]] == (finetune[3],)
    fake.finish(finetune[3], JobState.FAILED)
    assert fake.jobs[merge[3]].state is JobState.CANCELLED and fake.jobs[merge[0]].state is JobState.PENDING


def test_status_matrix_and_best_evaluation(run):
    store, built, fake = run
    submit_all(store, built, fake)
    for job_id in list(fake.jobs):
        fake.finish(job_id, JobState.COMPLETED)
    view = status.refresh([store.paths.root], {"fake": fake, "local": fake})[0]
    for variant, loss in (("v0", 0.9), ("v1", 0.5), ("v2", 0.7)):  # v3 wrote no report
        folder = store.paths.root / "work" / "variants" / variant / "reports"
        folder.mkdir(parents=True)
        # the layout stages/evaluate.py writes: tuned, base, loss_ratio, passed
        (folder / "evaluate.json").write_text(json.dumps(
            {"tuned": {"loss": loss}, "base": {"loss": 1.0}, "loss_ratio": loss, "passed": loss < 0.8}))
    text = "\n".join(sweepview.lines(store.paths.root, view.state))
    assert "4 variants x 2 per-variant stages" in text
    v1 = next(line for line in text.splitlines() if line.startswith("  v1 "))
    assert "COMPLETED" in v1 and job_of(store, "merge@v1") in v1 and "stages.finetune.params.lr=1" in v1
    best = [line for line in text.splitlines() if line.startswith("*")]
    assert len(best) == 1 and best[0].split()[1] == "v1" and "passed" in best[0]
    data = status.to_json(view)["sweep"]
    assert data["matrix"]["v3"] == {"finetune": "COMPLETED", "merge": "COMPLETED"}
    assert [r["variant"] for r in data["evaluations"] if r["best"]] == ["v1"]


def bad(write_spec, sweep_block):
    text = SWEEP.split("    sweep:")[0] + sweep_block
    with pytest.raises(SpecError) as err:
        plan.build(loader.load(write_spec(text)))  # the resource check is the plan's
    return err.value.message


def test_swept_key_that_does_not_exist_names_key_and_line(write_spec):
    msg = bad(write_spec, """    sweep:
      grid:
        stages.finetune.params.lrr: [1, 2]
""")
    assert "pipeline.yaml:12:" in msg and "stages.finetune.params.lrr" in msg and "does not exist" in msg
    msg = bad(write_spec, "    sweep:\n      grid:\n        stages.nope.params.lr: [1]\n")
    assert "pipeline.yaml:12:" in msg and "no stage 'nope'" in msg
    msg = bad(write_spec, "    sweep:\n      grid:\n        learning_rate: [1]\n")
    assert "is not settings.<key>" in msg


def test_empty_sweeps_are_refused(write_spec):
    assert "the sweep is empty" in bad(write_spec, "    sweep:\n      grid: {}\n")
    assert "has no values" in bad(write_spec, "    sweep:\n      grid:\n        stages.finetune.params.lr: []\n")
    assert "the sweep is empty" in bad(write_spec, "    sweep:\n      variants: []\n")
    assert "exactly one of" in bad(write_spec, "    sweep:\n      throttle: 2\n")


def test_sweep_that_changes_resources_of_an_array_stage_is_refused(write_spec):
    msg = bad(write_spec, """    sweep:
      grid:
        stages.finetune.resources.nodes: [1, 2]
""")
    assert "pipeline.yaml:12:" in msg and "sweep key stages.finetune.resources.nodes" in msg
    assert "stage finetune" in msg and "nodes 1 vs 2" in msg and "same resources" in msg


def test_invalid_variant_value_names_the_variant(write_spec):
    msg = bad(write_spec, """    sweep:
      variants:
        - {name: ok, stages.finetune.resources.nodes: 1}
        - {name: broken, stages.finetune.resources.nodes: 0}
""")
    assert "variant broken" in msg and "pipeline.yaml:13:" in msg and "greater than 0" in msg


def test_default_setting_not_in_the_file_may_be_swept(write_spec):
    """A typed field the file leaves at its default (Resources.time) is a key that exists."""
    text = SWEEP.split("    sweep:")[0] + "    sweep:\n      grid:\n        stages.download.resources.time: ['5', '6']\n"
    with pytest.raises(SpecError, match="changes the resources of stage download"):
        plan.build(loader.load(write_spec(text)))  # it exists; but download is then per-variant and its resources differ


def test_slurm_array_ids_parse():
    """sacct -X prints an array task as JobID `16_2` (JobIDRaw is the task's own number) and a pending array as
    one `16_[0-3%2]` record (seen on the 22.05 test cluster); squeue -r prints one line per task."""
    rows = parse_sacct("16_0|COMPLETED|0:0|dev1|2026-12-01T11:52:08|2026-12-01T11:52:10|None\n"
                       "17_[1-3%2]|PENDING|0:0|None assigned|Unknown|Unknown|Dependency\n")
    assert rows["16_0"].state is JobState.COMPLETED and rows["17_3"].state is JobState.PENDING and len(rows) == 4
    live = parse_squeue("17_1|PENDING|JobHeldUser||N/A\n")
    assert live["17_1"].state is JobState.HELD
    assert expand_array_ids("5_[0,2-3]") == ["5_0", "5_2", "5_3"] and expand_array_ids("42") == ["42"]
    assert parse_max_array_size("MaxArraySize            = 1001\nMaxJobCount = 10000\n") == 1001
    assert array_id(["16_0", "16_1"], 2) == "16"
    with pytest.raises(PipelineError, match="aftercorr needs"):
        array_id(["16_1", "16_2"], 2)
