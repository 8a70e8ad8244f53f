"""The download stage's s3:// source against a real local S3-compatible server (moto_server over HTTP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")

from tests.remote.conftest import REPO


def run_stage(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stages", *argv], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def test_download_model_from_s3(aws_env, tmp_path):
    model = tmp_path / "model"
    assert run_stage("make-tiny", "--dataset", str(REPO / "examples/data/dolly-tiny.jsonl"),
                     "--output", str(model)).returncode == 0
    client = boto3.client("s3", endpoint_url=aws_env.endpoint)
    client.create_bucket(Bucket="models")
    for path in model.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "models", f"tiny/v1/{path.relative_to(model)}")
    out = run_stage("download", "--source", "s3://models/tiny/v1", "--output", str(tmp_path / "got"))
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "got" / "manifest.json").read_text())
    assert {"config.json", "model.safetensors"} <= {f["path"] for f in manifest["files"]}
    again = run_stage("download", "--source", "s3://models/tiny/v1", "--output", str(tmp_path / "got"))
    assert "downloaded 0 object(s)" in again.stdout  # complete files are not fetched twice


def test_missing_bucket_is_one_clear_error(aws_env, tmp_path):
    out = run_stage("download", "--source", "s3://no-such-bucket/x", "--output", str(tmp_path / "o"))
    assert out.returncode == 2 and "NoSuchBucket" in out.stderr and "Traceback" not in out.stderr
