"""hf family data sources: a Hub or S3 dataset is fetched by the download stage and every later stage reads the
one validated copy; a local file is read in place; a malformed source is refused with file, line and key."""

from __future__ import annotations

import pytest

from orchestrator import loader, plan
from orchestrator.errors import SpecError

SPEC = """
name: p
cluster: local
family: hf
settings:
  model_source: tiny
  data: {data}
stages:
  - {{name: download, kind: download}}
  - {{name: finetune, kind: finetune}}
  - {{name: evaluate, kind: evaluate}}
"""


def build(write_spec, data: str) -> plan.Plan:
    return plan.build(loader.load(write_spec(SPEC.format(data=data))))


def test_hub_dataset_is_fetched_once_and_read_by_every_stage(write_spec):
    built = build(write_spec, "hf://datasets/databricks/databricks-dolly-15k")
    download = built.stage("download")
    assert "python -m stages fetch-data \\\n  --source hf://datasets/databricks/databricks-dolly-15k" in download.script
    assert download.script.index("fetch-data") < download.script.index("stages download")
    assert "data/dataset.jsonl" in download.outputs
    for name in ("finetune", "evaluate"):
        assert '--data "$WORKDIR/data/dataset.jsonl"' in built.stage(name).script


def test_data_file_globs_are_quoted(write_spec):
    path = write_spec(SPEC.format(data="s3://bucket/dolly/").replace(
        "  data: s3://bucket/dolly/\n", "  data: s3://bucket/dolly/\n  data_files: ['x; touch /tmp/MARKER', '*.jsonl']\n"))
    script = plan.build(loader.load(path)).stage("download").script
    assert "--files 'x; touch /tmp/MARKER' \\\n  --files '*.jsonl'" in script


def test_local_data_is_read_in_place_and_not_fetched(write_spec, tmp_path):
    built = build(write_spec, str(tmp_path / "d.jsonl"))
    assert "fetch-data" not in built.stage("download").script
    assert built.stage("download").outputs == ("model/config.json", "model/manifest.json")
    assert f"--data {tmp_path}/d.jsonl" in built.stage("finetune").script


@pytest.mark.parametrize("data", ["hf://databricks/databricks-dolly-15k", "hf://datasets/only-owner"])
def test_a_hub_dataset_must_name_a_dataset_repo(write_spec, data):
    with pytest.raises(SpecError) as err:
        build(write_spec, data)
    assert "pipeline.yaml:6" in str(err.value) and "settings.data" in str(err.value)
    assert "hf://datasets/<owner>/<name>" in str(err.value)
