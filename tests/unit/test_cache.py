"""Stage keys, the cross-run cache, `rerun --spec` and `--set` (issue 14 items 1-4), against the in-memory
FakeScheduler. The jobs themselves are real: each submitted stage runs through the real job wrapper
(orchestrator/jobside.execute: the rendered bash script, the declared-outputs check, the manifest), only the
queue is the fake one."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from orchestrator import apply, cache, jobside, loader, manifest, overrides, plan, replan, rerun_cancel, spec, status
from orchestrator.errors import PipelineError, SpecError
from orchestrator.scheduler.fake import FakeScheduler
from orchestrator.state import Store
from orchestrator.states import JobState
from tests.conftest import REPO
from tests.helpers import run_cli

CHAIN = """
    name: chain
    workdir: {workdir}
    stages:
      - name: download
        kind: command
        params: {{source: base}}
        run: 'mkdir -p model && echo "$PARAM_SOURCE" > model/weights.bin && echo cfg > model/config.json'
        outputs: [model/config.json]
      - name: finetune
        kind: command
        params: {{lr: 0.001}}
        run: 'mkdir -p ckpt && cat model/weights.bin > ckpt/adapter && echo "$PARAM_LR" >> ckpt/adapter'
        outputs: [ckpt/adapter]
        resources: {{time: "10"}}
      - name: merge
        kind: command
        run: 'mkdir -p merged && cat ckpt/adapter > merged/model'
        outputs: [merged/model]
      - name: report
        kind: command
        after: [download]
        run: 'mkdir -p reports && wc -c model/weights.bin > reports/size.txt'
        outputs: [reports/size.txt]
"""


def chain(workdir: str = "null", **edits: str) -> str:
    text = textwrap.dedent(CHAIN.format(workdir=workdir))
    for old, new in edits.items():
        text = text.replace(old, new)
    return text


@pytest.fixture
def fake() -> FakeScheduler:
    return FakeScheduler()


def submit(path: Path, fake: FakeScheduler, root: Path, options: cache.Options = cache.Options(),
           sets: tuple[str, ...] = ()) -> tuple[Store, plan.Plan, dict[str, cache.Decision]]:
    loaded = loader.load(path, overrides=sets)
    built = plan.build(loaded)
    store = apply.create_run(loaded, built, root)
    decisions = apply.submit_with_cache(store, built, fake, {s.name for s in built.stages}, options, 1)
    return store, built, decisions


def run_jobs(store: Store, fake: FakeScheduler) -> None:
    """Run every queued job of the run through the real job wrapper, in submission order, then tell the fake."""
    state = store.read()
    for name, stage in state.stages.items():
        current = stage.current
        if current is None or current.state is not JobState.PENDING:
            continue
        rc = jobside.execute(store.paths.root, name, current.job_id)
        fake.finish(current.job_id, JobState.COMPLETED if rc == 0 else JobState.FAILED, rc)
    status.refresh([store.paths.root], {"fake": fake, "local": fake})


def submitted(fake: FakeScheduler, store: Store) -> list[str]:
    run_id = store.read().run_id
    return sorted(r.stage for r in fake.requests.values() if r.run_id == run_id)


# ------------------------------------------------------------------------------------------------ item 1: keys


def test_keys_equal_across_runs_and_folders_resources_do_not_count(write_spec, tmp_path):
    first = plan.build(loader.load(write_spec(chain())))
    again = plan.build(loader.load(write_spec(chain(), "copy.yaml")))
    moved_dir = tmp_path / "elsewhere"
    moved_dir.mkdir()
    (moved_dir / "p.yaml").write_text(chain(**{'time: "10"': 'time: "30", nodes: 1'}))
    moved = plan.build(loader.load(moved_dir / "p.yaml"))
    keys = {s.name: s.key for s in first.stages}
    assert all(len(k) == 64 for k in keys.values()) and len(set(keys.values())) == 4
    assert keys == {s.name: s.key for s in again.stages}
    assert keys == {s.name: s.key for s in moved.stages}  # another folder, another time limit: same work
    assert first.to_json()["stages"][0]["key"] == keys["download"]


@pytest.mark.parametrize("example", ["tiny-llama-local.yaml", "llama3-8b-trn1.yaml", "llama3-8b-nxd-tp-lora-trn1.yaml",
                                     "llama3-70b-torchtune-p5.yaml"])
def test_every_family_keys_equal_from_another_folder_and_data_counts(example, tmp_path):
    """The examples copied elsewhere (as an upload to a head node is): same keys, since scripts carry the spec's
    folder only as a path the key normalises; then one data file changed: the stages reading it change key."""
    copy = tmp_path / "examples"
    shutil.copytree(REPO / "examples", copy)
    shutil.copytree(REPO / "clusters", tmp_path / "clusters")
    here = plan.build(loader.load(REPO / "examples" / example))
    there = plan.build(loader.load(copy / example))
    assert [s.key for s in here.stages] == [s.key for s in there.stages]
    for data in (copy / "data").glob("*.jsonl"):
        data.write_text(data.read_text() + "\n")
    changed = plan.build(loader.load(copy / example))
    readers = [s.name for s, c in zip(there.stages, changed.stages) if s.key != c.key]
    reading = [s.name for s in there.stages if f"{copy}/data/" in s.script]
    assert set(reading) <= set(readers)  # every stage whose script reads the folder's data changed key
    assert bool(reading) == (example == "tiny-llama-local.yaml")  # the one example that ships its data


def test_changed_param_changes_its_key_and_dependents_only(write_spec):
    base = {s.name: s.key for s in plan.build(loader.load(write_spec(chain()))).stages}
    edited = {s.name: s.key for s in plan.build(loader.load(write_spec(chain(**{"lr: 0.001": "lr: 0.002"}), "b.yaml"))).stages}
    assert [n for n in base if base[n] != edited[n]] == ["finetune", "merge"]


def test_data_file_content_is_part_of_the_key(write_spec, tmp_path):
    text = """
        name: files
        stages:
          - name: train
            kind: command
            params: {data: data/train.jsonl}
            run: 'cat "$PARAM_DATA" > out'
            outputs: [out]
    """
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"a": 1}\n')
    path = write_spec(text)
    before = plan.build(loader.load(path)).stages[0].key
    (tmp_path / "data" / "train.jsonl").write_text('{"a": 2}\n')
    assert plan.build(loader.load(path)).stages[0].key != before


def test_output_roots_stop_where_another_stage_writes():
    stages = [plan.StagePlan("e", "evaluate", "hf", (), spec.Resources(), "#!", ("reports/evaluate.json",), 0),
              plan.StagePlan("i", "inference", "hf", (), spec.Resources(), "#!", ("reports/inference.json",), 0),
              plan.StagePlan("d", "download", "hf", (), spec.Resources(), "#!",
                             ("model/config.json", "model/manifest.json"), 0)]
    roots = {s.name: s.output_roots for s in plan.with_output_roots(stages)}
    assert roots == {"e": ("reports/evaluate.json",), "i": ("reports/inference.json",), "d": ("model",)}


# ------------------------------------------------------------------------------------------ item 2: the cache


def test_second_submit_of_unchanged_chain_submits_nothing(write_spec, tmp_path, fake):
    path = write_spec(chain())
    first, _, _ = submit(path, fake, tmp_path / "runs")
    run_jobs(first, fake)
    assert {s.state for s in first.read().stages.values()} == {JobState.COMPLETED}
    second, _, decisions = submit(path, fake, tmp_path / "runs")
    assert submitted(fake, second) == []
    state = second.read()
    assert {s.state for s in state.stages.values()} == {JobState.CACHED}
    src = state.stages["merge"].current.cached_from
    assert src.run_id == first.read().run_id and src.job_id == first.read().stages["merge"].current.job_id
    assert decisions["merge"].reason == f"from run {src.run_id}, job {src.job_id}"
    # The outputs are this run's own files now (hard links): deleting the first run does not take them away.
    own = second.paths.workdir_default / "merged" / "model"
    assert own.read_text() == "base\n0.001\n" and os.stat(own).st_nlink == 2
    assert (second.paths.workdir_default / "model" / "weights.bin").exists()  # the whole root, not just the marker
    assert status.refresh([second.paths.root], {"fake": fake})[0].state.stages["merge"].state is JobState.CACHED


def test_changed_lr_reruns_finetune_and_dependents_with_cached_inputs(write_spec, tmp_path, fake):
    first, _, _ = submit(write_spec(chain()), fake, tmp_path / "runs")
    run_jobs(first, fake)
    second, _, decisions = submit(write_spec(chain(), "b.yaml"), fake, tmp_path / "runs",
                                  sets=("stages.finetune.params.lr=0.5",))
    assert submitted(fake, second) == ["finetune", "merge"]
    assert "no earlier run has key" in decisions["finetune"].reason
    assert decisions["merge"].reason == "it depends on finetune, which runs"
    by_stage = {r.stage: r for r in fake.requests.values() if r.run_id == second.read().run_id}
    assert by_stage["finetune"].after == ()  # download is CACHED: nothing to wait for
    run_jobs(second, fake)
    assert (second.paths.workdir_default / "merged" / "model").read_text() == "base\n0.5\n"
    assert (first.paths.workdir_default / "merged" / "model").read_text() == "base\n0.001\n"  # untouched


def test_deleted_or_rewritten_output_forces_a_run(write_spec, tmp_path, fake):
    path = write_spec(chain())
    first, _, _ = submit(path, fake, tmp_path / "runs")
    run_jobs(first, fake)
    (first.paths.workdir_default / "ckpt" / "adapter").unlink()
    (first.paths.workdir_default / "reports" / "size.txt").write_text("other\n")
    second, _, decisions = submit(path, fake, tmp_path / "runs")
    assert submitted(fake, second) == ["finetune", "merge", "report"]
    assert "adapter is gone" in decisions["finetune"].reason
    assert "changed since it was recorded" in decisions["report"].reason
    assert second.read().stages["download"].state is JobState.CACHED


def test_no_cache_force_and_not_completed_source(write_spec, tmp_path, fake):
    path = write_spec(chain())
    first, _, _ = submit(path, fake, tmp_path / "runs")
    # Not run yet: the first run's stages are PENDING, so nothing is reusable.
    second, _, decisions = submit(path, fake, tmp_path / "runs")
    assert len(submitted(fake, second)) == 4 and "no earlier run" in decisions["download"].reason
    run_jobs(first, fake)
    third, _, decisions = submit(path, fake, tmp_path / "runs", cache.Options(enabled=False))
    assert len(submitted(fake, third)) == 4 and decisions["merge"].reason == "--no-cache"
    fourth, _, decisions = submit(path, fake, tmp_path / "runs", cache.Options(force=frozenset({"finetune"})))
    assert submitted(fake, fourth) == ["finetune", "merge"] and decisions["finetune"].reason == "--force"


def test_failed_source_and_missing_manifest_are_not_reused(write_spec, tmp_path, fake):
    path = write_spec(chain())
    first, _, _ = submit(path, fake, tmp_path / "runs")
    run_jobs(first, fake)
    job = first.read().stages["download"].current.job_id
    first.paths.manifest("download", job).unlink()
    second, _, decisions = submit(path, fake, tmp_path / "runs")
    assert "no manifest" in decisions["download"].reason and len(submitted(fake, second)) == 4


def test_kind_or_stage_cache_false_and_no_outputs_always_run(write_spec, tmp_path, fake):
    text = chain().replace("outputs: [reports/size.txt]", "outputs: [reports/size.txt]\n    cache: false")
    text = text.replace("    outputs: [merged/model]\n", "")
    path = write_spec(text)
    first, _, _ = submit(path, fake, tmp_path / "runs")
    run_jobs(first, fake)
    second, _, decisions = submit(path, fake, tmp_path / "runs")
    assert submitted(fake, second) == ["merge", "report"]
    assert decisions["report"].reason.startswith("cache: false")
    assert decisions["merge"].reason.startswith("declares no outputs")


def test_other_cluster_is_not_reused(write_spec, tmp_path, fake):
    first, _, _ = submit(write_spec(chain()), fake, tmp_path / "runs")
    run_jobs(first, fake)
    other = chain().replace("name: chain\n", "name: chain\ncluster: {name: other, scheduler: local}\n")
    second, _, decisions = submit(write_spec(other, "o.yaml"), fake, tmp_path / "runs")
    assert "not other" in decisions["download"].reason and len(submitted(fake, second)) == 4


def test_shared_workdir_needs_no_links(write_spec, tmp_path, fake):
    path = write_spec(chain(workdir=str(tmp_path / "shared")))
    first, _, _ = submit(path, fake, tmp_path / "runs")
    run_jobs(first, fake)
    second, _, _ = submit(path, fake, tmp_path / "runs")
    assert submitted(fake, second) == []
    assert second.read().stages["merge"].current.cached_from.linked == "same"


def test_rerun_notices_a_cached_source_gone(write_spec, tmp_path, fake):
    """A CACHED stage's files deleted from the run (as when a symlinked source run is removed): a rerun of a
    stage below it notices and runs it again, for real, into files of its own."""
    path = write_spec(chain())
    first, _, _ = submit(path, fake, tmp_path / "runs")
    run_jobs(first, fake)
    second, built, _ = submit(path, fake, tmp_path / "runs")
    # The cached model is deleted from this run's workdir; merge then fails and is rerun: download must run too.
    (second.paths.workdir_default / "model" / "weights.bin").unlink()
    notes: list[str] = []
    with second.update() as st:
        st.stages["report"].attempts[-1].state = JobState.FAILED
    ids = rerun_cancel.rerun(second, built, fake, stage="report", notes=notes)
    assert sorted(ids) == ["download", "report"]
    assert any("download: its outputs changed" in n for n in notes)
    run_jobs(second, fake)
    assert second.read().stages["report"].state is JobState.COMPLETED
    # download ran for real in this run: its weights are a new file, not a link into the first run
    assert os.stat(second.paths.workdir_default / "model" / "weights.bin").st_nlink == 1
    assert os.stat(first.paths.workdir_default / "model" / "weights.bin").st_nlink == 1


def test_rerunning_the_source_stage_leaves_the_adopting_run_alone(write_spec, tmp_path, fake):
    """merge rewrites merged/model in place (`cat > file` truncates the inode): the job wrapper first gives the
    source run its own copy, so the run that hard-linked the file keeps its outputs unchanged."""
    path = write_spec(chain())
    first, built, _ = submit(path, fake, tmp_path / "runs")
    run_jobs(first, fake)
    second, second_plan, _ = submit(path, fake, tmp_path / "runs")
    shared = second.paths.workdir_default / "merged" / "model"
    assert os.stat(shared).st_nlink == 2
    recorded = os.stat(shared).st_mtime_ns
    assert list(rerun_cancel.rerun(first, built, fake, stage="merge")) == ["merge"]
    run_jobs(first, fake)
    assert os.stat(shared).st_nlink == 1 and os.stat(shared).st_mtime_ns == recorded
    assert manifest.verify_own(second, second_plan, ["merge"]) == {}
    assert any("copied first" in log.read_text() for log in (first.paths.root / "logs").glob("merge.*"))


def test_plain_rerun_keeps_completed_stages_that_declare_no_outputs(write_spec, tmp_path, fake):
    """Regression (seen on Slurm): an empty manifest must not make a completed upstream stage look changed."""
    flag = tmp_path / "second-try"
    path = write_spec(f"""
        name: plain
        stages:
          - {{name: prep, kind: command, run: "echo prep"}}
          - {{name: train, kind: command, run: "test -f {flag} || {{ touch {flag}; exit 3; }}"}}
    """)
    run, built, _ = submit(path, fake, tmp_path / "runs")
    run_jobs(run, fake)
    assert run.read().stages["train"].state is JobState.FAILED
    assert rerun_cancel.rerun(run, built, fake, notes=[]).keys() == {"train"}


# -------------------------------------------------------------------------------------- item 3: rerun --spec


def test_rerun_spec_resubmits_changed_and_dependents_and_records_versions(write_spec, tmp_path, fake):
    run, built, _ = submit(write_spec(chain()), fake, tmp_path / "runs")
    run_jobs(run, fake)
    edited = loader.load(write_spec(chain(**{"lr: 0.001": "lr: 0.01"}), "edited.yaml"))
    notes: list[str] = []
    decisions = replan.replan(run, built, edited, plan.build(edited), fake, notes=notes)
    assert sorted(decisions) == ["finetune", "merge"]
    state = run.read()
    assert state.spec_version == 2 and (run.paths.root / "spec.2.yaml").read_text() == edited.source.path.read_text()
    assert run.paths.plan_version(1).is_file()
    assert [a.spec_version for a in state.stages["finetune"].attempts] == [1, 2]
    assert len(state.stages["download"].attempts) == 1
    run_jobs(run, fake)
    assert (run.paths.workdir_default / "merged" / "model").read_text() == "base\n0.01\n"
    with pytest.raises(PipelineError, match="changes no stage's key"):
        same = loader.load(write_spec(chain(**{"lr: 0.001": "lr: 0.01", 'time: "10"': 'time: "20"'}), "t.yaml"))
        replan.replan(run, plan.load_saved(json.loads(run.paths.plan.read_text()), run.paths.root / "scripts"), same,
                     plan.build(same), fake)


def test_rerun_spec_refuses_to_drop_a_live_stage(write_spec, tmp_path, fake):
    run, built, _ = submit(write_spec(chain()), fake, tmp_path / "runs")
    renamed = loader.load(write_spec(chain().replace("name: report", "name: sizes"), "r.yaml"))
    before = run.paths.plan.read_text()
    with pytest.raises(PipelineError, match="removes or renames stage.s. report .job \\d+.*live job"):
        replan.replan(run, built, renamed, plan.build(renamed), fake)
    assert run.paths.plan.read_text() == before and run.read().spec_version == 1  # nothing changed


# ------------------------------------------------------------------------------------------- item 4: --set


def test_set_by_name_and_index_yaml_typed(write_spec):
    path = write_spec(chain())
    # YAML-typed exactly as in the file: PyYAML (YAML 1.1) reads 2.0e-4 as a float and 2e-4 as a string.
    loaded = loader.load(path, overrides=["stages.finetune.params.lr=2.0e-4", "stages.0.params.source=[a, b]",
                                        "env.extra=yes please"])
    stages = {s.name: s for s in loaded.pipeline.stages}
    assert stages["finetune"].params["lr"] == 2e-4 and stages["download"].params["source"] == ["a", "b"]
    assert loaded.pipeline.env == {"extra": "yes please"}
    text = overrides.effective_text(loaded.source)
    assert "--set stages.finetune.params.lr=2.0e-4" in text and "lr: 0.0002" in text


def test_validate_and_force_on_the_command_line(write_spec, capsys):
    path = write_spec(chain())
    assert run_cli("validate", str(path), "--set", "stages.merge.retries=2") == 0
    assert run_cli("validate", str(path), "--set", "stages.merge.retries=-1") == 1
    assert "--set stages.merge.retries=-1: stages[2].retries: Input should be greater than or equal to 0" in \
        capsys.readouterr().err
    assert run_cli("submit", str(path), "--dry-run", "--force", "nosuch") == 1
    assert "--force nosuch: the pipeline has no stage 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("item, message", [
    ("stages.finetune.resources.nodes=abc", r"--set stages.finetune.resources.nodes=abc: stages\[1\].resources.nodes"),
    ("stages.nosuch.params.lr=1", "no entry named 'nosuch'"),
    ("stages.9.params.lr=1", r"has 4 entries, no \[9\]"),
    ("name.x=1", "name is str 'chain', not a mapping"),
    ("lr", "not KEY.PATH=VALUE"),
    ("stages.finetune.params.lr=[1", "not valid YAML"),
    ("stages.finetune.nodess=2", r"--set stages.finetune.nodess=2: stages\[1\].nodess: unknown key"),
])
def test_bad_set_names_the_override(write_spec, item, message):
    with pytest.raises(SpecError, match=message):
        loader.load(write_spec(chain()), overrides=[item])
