"""stages/upload.py against a REAL local S3-compatible server (moto_server over HTTP, real boto3 transfers).

What moto can and cannot simulate:
- missing bucket (NoSuchBucket) and multipart uploads: real server behaviour;
- access denied: real, from a second moto server with IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT) and a user
  without any policy; only partially like AWS (moto's IAM evaluation is a subset of AWS's);
- expired credentials: moto never expires tokens, so that one uses botocore's Stubber on a real S3 client.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 is in the `remote` extra: pip install -e '.[remote]'")
from botocore.stub import Stubber

from stages import upload
from stages.common import StageError
from tests.remote.conftest import REPO, S3Server

MB = 1024 * 1024


def make_source(root: Path) -> Path:
    src = root / "model"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}\n', encoding="utf-8")
    (src / "sub" / "notes.txt").write_text("hello\n", encoding="utf-8")
    (src / "sub" / "deeper" / "empty.bin").write_bytes(b"")
    (src / "big.safetensors").write_bytes(os.urandom(11 * MB + 123))  # 3 parts of 5 MiB: multipart
    (src / "manifest.json").write_text("{}", encoding="utf-8")  # replaced by the uploaded manifest
    return src


def new_bucket(server: S3Server, name: str) -> Any:
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=name)
    return client


def args(src: Path, dest: str, endpoint: str) -> list[str]:
    return ["--source", str(src), "--dest", dest, "--endpoint-url", endpoint,
            "--multipart-threshold-mb", "5", "--part-size-mb", "5"]


def test_upload_folder_then_resume_skips_unchanged(aws_env: S3Server, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    client = new_bucket(aws_env, "models-one")
    src = make_source(tmp_path)
    assert upload.main(args(src, "s3://models-one/runs/r1/", aws_env.endpoint)) == 0
    out = capsys.readouterr().out
    assert "uploaded 4, skipped 0" in out

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="models-one")["Contents"])
    assert keys == ["runs/r1/big.safetensors", "runs/r1/config.json", "runs/r1/manifest.json",
                    "runs/r1/sub/deeper/empty.bin", "runs/r1/sub/notes.txt"]
    big = client.head_object(Bucket="models-one", Key="runs/r1/big.safetensors")
    digest = hashlib.sha256((src / "big.safetensors").read_bytes()).hexdigest()
    assert big["Metadata"]["sha256"] == digest
    assert big["ContentLength"] == 11 * MB + 123
    assert big["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts
    manifest = json.loads(client.get_object(Bucket="models-one", Key="runs/r1/manifest.json")["Body"].read())
    assert [f["path"] for f in manifest["files"]] == ["big.safetensors", "config.json", "sub/deeper/empty.bin",
                                                      "sub/notes.txt"]
    assert manifest["files"][0] == {"path": "big.safetensors", "size": 11 * MB + 123, "sha256": digest}

    # Again: nothing changed, nothing is sent.
    assert upload.main(args(src, "s3://models-one/runs/r1", aws_env.endpoint)) == 0
    assert "uploaded 0, skipped 4" in capsys.readouterr().out
    # One file changed (same size, other content): only it is sent again.
    (src / "sub" / "notes.txt").write_text("HELLO\n", encoding="utf-8")
    assert upload.main(args(src, "s3://models-one/runs/r1", aws_env.endpoint)) == 0
    out = capsys.readouterr().out
    assert "uploaded 1, skipped 3" in out and "upload  sub/notes.txt" in out
    body = client.get_object(Bucket="models-one", Key="runs/r1/sub/notes.txt")["Body"].read()
    assert body == b"HELLO\n"


def test_stage_entry_point(aws_env: S3Server, tmp_path: Path) -> None:
    """`python -m stages upload` as a job runs it (registered in stages/__main__.py)."""
    new_bucket(aws_env, "models-entry")
    src = make_source(tmp_path)
    done = subprocess.run([sys.executable, "-m", "stages", "upload", *args(src, "s3://models-entry", aws_env.endpoint)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ.copy(), check=False)
    assert done.returncode == 0, done.stderr
    assert "manifest.json written" in done.stdout


def test_missing_bucket(aws_env: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source(tmp_path)
    assert upload.main(args(src, "s3://no-such-bucket-here/x", aws_env.endpoint)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: bucket 'no-such-bucket-here' does not exist"
    assert "aws s3 mb s3://no-such-bucket-here" in err


def test_access_denied(s3_server_iam: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """Partial simulation: moto's IAM enforcement with a policy-less user (the first 4 requests are free)."""
    admin = {"endpoint_url": s3_server_iam.endpoint, "region_name": "us-east-1", "aws_access_key_id": "testing",
             "aws_secret_access_key": "testing"}
    boto3.client("s3", **admin).create_bucket(Bucket="locked-bucket")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    src = make_source(tmp_path)
    assert upload.main(args(src, "s3://locked-bucket/p", s3_server_iam.endpoint)) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("error: access denied to s3://locked-bucket"), first


def test_expired_credentials_stubbed(tmp_path: Path) -> None:
    """Stubbed: moto cannot expire credentials, so botocore's Stubber plays S3 answering ExpiredToken."""
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    src = make_source(tmp_path)
    with Stubber(client) as stubber:
        stubber.add_client_error("head_bucket", service_error_code="ExpiredToken",
                                 service_message="The provided token has expired.", http_status_code=400,
                                 expected_params={"Bucket": "b-expired"})
        with pytest.raises(StageError) as info:
            upload.upload(src, "b-expired", "p", client)
    assert str(info.value) == "AWS credentials have expired"
    assert "files already uploaded are skipped" in (info.value.hint or "")


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert upload.main(["--source", str(tmp_path), "--dest", "/local/path"]) == 2
    assert "is not an s3:// URL" in capsys.readouterr().err
    assert upload.main(["--source", str(tmp_path / "missing"), "--dest", "s3://b/p",
                        "--endpoint-url", "http://127.0.0.1:9"]) == 2
    assert "not a directory" in capsys.readouterr().err
