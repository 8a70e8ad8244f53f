"""`tracking: {backend: wandb}`: the real finetune program, run by the job wrapper on the local backend, writes a
W&B offline run under <run dir>/wandb/<stage> (wandb 0.31.0, installed by the test into a cache with --no-deps,
like the MLflow client in mlflow_env.py). No W&B server is involved: offline mode is the feature (`wandb sync`
uploads later), so nothing here stands in for one.

The run is read back from its `.wandb` file: wandb 0.31 no longer ships a Python reader (the old
wandb/sdk/internal/datastore.py is gone; wandb-core writes the file), so `records` below decodes the format
wandb-core writes (core/pkg/leveldb in wandb/wandb: a 7-byte header ":W&B", magic 0xBEE1, version 0, then
LevelDB-log records in 32 KiB blocks, each chunk crc32c(4) length(2, LE) type(1)) into wandb's own protobuf
`wandb.proto.wandb_internal_pb2.Record`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator import report, tracking
from orchestrator.state import RunPaths, Store
from tests.helpers import latest_run, run_cli, wait_terminal
from tests.report.mlflow_env import CACHE
from tests.stages.conftest import DATA, tiny  # noqa: F401 (fixture)

VERSION = "0.31.0"
# `pip install --dry-run wandb==0.31.0` over the project's venv: what it would add (nothing it would upgrade).
WANDB = [f"wandb=={VERSION}", "cwevals==0.0.1b1", "distro==1.9.0", "googleapis-common-protos==1.76.0",
         "opentelemetry-api==1.45.2", "opentelemetry-exporter-http-transport==0.66b2",
         "opentelemetry-exporter-otlp-common==0.66b2", "opentelemetry-exporter-otlp-proto-common==1.45.2",
         "opentelemetry-exporter-otlp-proto-http==1.45.2", "opentelemetry-proto==1.45.2", "opentelemetry-sdk==1.45.2",
         "opentelemetry-semantic-conventions==0.66b2", "platformdirs==4.14.9", "protobuf==7.36.2", "sniffio==1.3.1"]
KEY = "wbkey-7f3a9c1e5d2b8a4f6e0c9b7d1a3f5e8c2b4d6a9f"  # a made-up API key: it must end up nowhere


def wandb_site() -> Path:
    site = CACHE / f"wandb-{VERSION}"
    if not (site / "wandb" / "__init__.py").is_file():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                               *WANDB], capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, f"pip install wandb failed: {done.stderr[-1500:]}"
    return site


def records(path: Path) -> list[Any]:
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B" and data[4:6] == b"\xe1\xbe" and data[6] == 0, data[:7]
    out, chunk, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one whole Record
            record = Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def of(found: list[Any], kind: str) -> list[Any]:
    return [r for r in found if r.WhichOneof("record_type") == kind]


def items(entries: Any) -> dict[str, Any]:
    """Config, history and summary items: `key`, or `nested_key` parts (wandb-core writes the latter)."""
    return {e.key or ".".join(e.nested_key): json.loads(e.value_json) for e in entries}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The API key as a `file:` secret (mode 0600, as orchestrator/secrets.py requires)."""
    key = tmp_path / "wandb-key"
    key.write_text(KEY)
    key.chmod(0o600)
    return key


def test_wandb_job_env_is_offline_and_holds_no_key(write_spec, key_file):
    path = write_spec(f"""
        name: wb
        tracking: {{backend: wandb, entity: team}}
        secrets: {{WANDB_API_KEY: {{file: {key_file}}}}}
        stages:
          - name: train
            kind: command
            run: test "$WANDB_MODE/$WANDB_PROJECT/$WANDB_ENTITY" = offline/wb/team && test -n "$WANDB_API_KEY"
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    assert {s.value for s in wait_terminal(run_dir).values()} == {"COMPLETED"}
    env = tracking.job_env(RunPaths(run_dir))
    assert env == {"PIPELINE_TRACKING": "wandb", "PIPELINE_WANDB_DIR": str(run_dir / "wandb"),
                   "WANDB_MODE": "offline", "WANDB_PROJECT": "wb", "WANDB_ENTITY": "team"}
    assert not leaks(run_dir)


def leaks(run_dir: Path) -> list[Path]:
    """Every file under the run dir (scripts, plan, state, logs, the W&B files) holding the API key's value."""
    return [p for p in run_dir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]


@pytest.mark.slow
def test_finetune_writes_a_wandb_offline_run_in_the_run_dir(write_spec, tiny, key_file, tmp_path,  # noqa: F811
                                                            monkeypatch, capsys):
    site = wandb_site()
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # not the user's ~/.config/wandb
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    path = write_spec(f"""
        name: wbrun
        tracking: {{backend: wandb, project: issue15}}
        secrets: {{WANDB_API_KEY: {{file: {key_file}}}}}
        stages:
          - name: train
            kind: command
            run: >-
              test -n "$WANDB_API_KEY" && {sys.executable} -m stages finetune --model {tiny} --data {DATA}
              --output ck --max-steps 4 --save-steps 4 --batch-size 4 --seq-len 64 --lora-r 4 --lora-alpha 8
              --target-modules q_proj,v_proj
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    assert {s.value for s in wait_terminal(run_dir, timeout=300).values()} == {"COMPLETED"}
    offline = sorted((run_dir / "wandb" / "train" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    sys.path.insert(0, str(site))
    try:
        found = records(next(offline[0].glob("run-*.wandb")))
    finally:
        sys.path.remove(str(site))
    run = of(found, "run")[0].run
    job = Store(run_dir).read().stages["train"].current.job_id
    assert run.display_name == f"{run_dir.name}/train" and run.project == "issue15"
    assert f"job_id:{job}" in run.tags and "stage:train" in run.tags
    config = items([*run.config.update, *(i for r in of(found, "config") for i in r.config.update)])
    assert config["pipeline"]["pipeline.job_id"] == job and config["pipeline"]["slurm_job_id"] == ""
    assert config["max_steps"] == 4 and config["lr"] == 1e-4
    history = [items(r.history.item) for r in of(found, "history")]
    steps = [h for h in history if "loss" in h]
    assert [h["_step"] for h in steps] == [1, 2, 3, 4] and all(h["loss"] > 0 and h["grad_norm"] > 0 for h in steps)
    summary = items([i for r in of(found, "summary") for i in r.summary.update])
    assert summary["_step"] == 4 and summary["loss"] == steps[-1]["loss"]
    assert [r.exit.exit_code for r in of(found, "exit")] == [0]

    hint = f"wandb sync {offline[0]}"
    assert report.collect(run_dir).links == {"train": hint}
    capsys.readouterr()
    assert run_cli("status", run_dir.name, "--json") == 0
    assert json.loads(capsys.readouterr().out)["stages"]["train"]["tracking"] == hint
    assert run_cli("status", run_dir.name) == 0  # the table's NOTE says where the tracker has the stage
    assert f"tracker: {hint}" in capsys.readouterr().out
    assert not leaks(run_dir)


@pytest.mark.slow
def test_a_rerun_writes_a_second_offline_folder_of_the_same_wandb_run(write_spec, tmp_path, monkeypatch):
    """Two attempts (the first fails at step 5, `pipeline rerun` continues 6-10): each attempt gets its own offline
    folder carrying the same W&B run id, so `wandb sync` of both continues one run; the hint names the latest."""
    from tests.report.conftest import TRAIN

    site = wandb_site()
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    path = write_spec(f"""
        name: wbre
        tracking: {{backend: wandb}}
        stages:
          - {{name: train, kind: command, run: "{sys.executable} -c \\"{TRAIN}\\""}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    wait_terminal(run_dir)
    assert run_cli("rerun", run_dir.name) == 0
    assert {s.value for s in wait_terminal(run_dir).values()} == {"COMPLETED"}
    offline = sorted((run_dir / "wandb" / "train" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2, offline
    sys.path.insert(0, str(site))
    try:
        runs = [records(next(folder.glob("run-*.wandb"))) for folder in offline]
    finally:
        sys.path.remove(str(site))
    assert {of(found, "run")[0].run.run_id for found in runs} == {f"{run_dir.name}-train"}
    assert [[items(r.history.item)["_step"] for r in of(found, "history")] for found in runs] == [
        [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    jobs = [a.job_id for a in Store(run_dir).read().stages["train"].attempts]
    assert [items(of(found, "run")[0].run.config.update)["pipeline"]["pipeline.job_id"] for found in runs] == jobs
    assert report.collect(run_dir).links == {"train": f"wandb sync {offline[-1]}"}
