"""Model and dataset downloads through the real huggingface_hub client against tests/hubserver.py.

huggingface.co cannot be reached from here, so the Hub's side is a local stand-in serving the HTTP API subset
snapshot_download uses (see that module); the client, its resume logic and its error mapping are the real ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hubserver import Hub
from tests.stages.conftest import DATA, stage

TOKEN = "hf_test_token_for_the_local_hub_0123456789"


@pytest.fixture
def hub(tiny: Path) -> Iterator[Hub]:
    server = Hub()
    server.add("model", "acme/tiny-llama", {p.name: p.read_bytes() for p in tiny.iterdir() if p.is_file()},
               token=TOKEN)
    rows = DATA.read_text(encoding="utf-8")
    server.add("dataset", "acme/dolly-mini", {"data/train.jsonl": rows.encode(), "data/test.jsonl": rows.encode()[:200],
                                              "README.md": b"# dolly mini\n"})
    listed = [json.loads(line) for line in rows.splitlines() if line.strip()][:5]
    server.add("dataset", "acme/as-json", {"rows.json": json.dumps(listed).encode()})
    bad = rows.splitlines()[:3] + ['{"instruction": "no answer here"}']
    server.add("dataset", "acme/broken", {"train.jsonl": "\n".join(bad).encode()})
    yield server.start()
    server.stop()


def env_for(hub: Hub, token: str | None) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return env


def test_gated_model_downloads_with_the_runtime_token_and_resumes(hub, tmp_path, tiny):
    out = tmp_path / "model"
    stage("download", "--source", "hf://acme/tiny-llama", "--output", str(out), env=env_for(hub, TOKEN))
    names = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert (out / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    file_gets = [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert file_gets and all(auth == f"Bearer {TOKEN}" for _, _, auth in file_gets)

    # A requeued job runs the stage again: finished files are kept, nothing is fetched twice.
    before = hub.gets("model.safetensors")
    stage("download", "--source", "hf://acme/tiny-llama", "--output", str(out), env=env_for(hub, TOKEN))
    assert hub.gets("model.safetensors") == before


def test_gated_model_without_a_token_fails_and_says_why(hub, tmp_path):
    out = stage("download", "--source", "hf://acme/tiny-llama", "--output", str(tmp_path / "m"),
                env=env_for(hub, None), check=False)
    assert out.returncode == 2 and "gated" in out.stderr and "HF_TOKEN" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_repo_is_named(hub, tmp_path):
    out = stage("fetch-data", "--source", "hf://datasets/acme/nope", "--output", str(tmp_path / "d.jsonl"),
                env=env_for(hub, None), check=False)
    assert out.returncode == 2 and "acme/nope" in out.stderr and "no such repository" in out.stderr


def test_hub_dataset_becomes_one_validated_jsonl(hub, tmp_path):
    target = tmp_path / "data" / "dataset.jsonl"
    stage("fetch-data", "--source", "hf://datasets/acme/dolly-mini", "--output", str(target), env=env_for(hub, None))
    expected = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    assert [json.loads(line) for line in target.read_text().splitlines()] == expected  # the train split only
    manifest = json.loads(target.with_suffix(".manifest.json").read_text())
    assert manifest["rows"] == len(expected) and [Path(f["file"]).name for f in manifest["files"]] == ["train.jsonl"]
    assert not any("README" in path for _, path, _ in hub.requests if "/resolve/" in path)  # data files only


def test_json_list_and_explicit_file_glob(hub, tmp_path):
    target = tmp_path / "d.jsonl"
    stage("fetch-data", "--source", "hf://datasets/acme/as-json", "--files", "*.json", "--output", str(target),
          env=env_for(hub, None))
    assert len(target.read_text().splitlines()) == 5


def test_a_bad_row_names_the_source_file_and_row_and_nothing_is_written(hub, tmp_path):
    target = tmp_path / "d.jsonl"
    out = stage("fetch-data", "--source", "hf://datasets/acme/broken", "--output", str(target),
                env=env_for(hub, None), check=False)
    assert out.returncode == 2 and "train.jsonl:4: missing column 'response'" in out.stderr
    assert not target.exists()


def test_model_ids_must_name_a_dataset_repo(tmp_path):
    out = stage("fetch-data", "--source", "hf://acme/dolly", "--output", str(tmp_path / "d.jsonl"), check=False)
    assert out.returncode == 2 and "hf://datasets/<owner>/<name>" in out.stderr
