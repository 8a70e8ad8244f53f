"""upload: copy a directory (a merged model, adapters, reports) to S3, verified, resumable.

    python -m stages upload --source DIR --dest s3://bucket/prefix [--endpoint-url URL]

Every file goes through boto3's managed transfer (multipart above --multipart-threshold-mb, parts of
--part-size-mb, several threads) with its sha256 stored as object metadata `sha256`. Resumable: a file whose
object already exists with the same size and sha256 is skipped, so rerunning an interrupted upload sends only
what is missing. After each upload, head_object must show the same size and sha256, else the stage fails.
Last, `manifest.json` ({"files": [{path, size, sha256}]}, the format of stages.common.write_manifest) is written
to the destination; a complete manifest means a complete upload. A top-level manifest.json of the source is
not uploaded as a file (the written one replaces it).

Errors exit non-zero with one line: missing bucket, access denied, expired or unrecognised credentials, no
credentials, unreachable endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from stages.common import StageError, entry, log, sha256

MB = 1024 * 1024
MANIFEST = "manifest.json"


def parse_dest(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without trailing slash)."""
    if not url.startswith("s3://"):
        raise StageError(f"--dest {url!r} is not an s3:// URL", "use s3://bucket/prefix")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise StageError(f"--dest {url!r} names no bucket", "use s3://bucket/prefix")
    return bucket, prefix.strip("/")


def key_of(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def files_of(source: Path) -> list[tuple[str, Path]]:
    """(relative posix path, file) for every regular file under source, sorted; not a top-level manifest.json."""
    if not source.is_dir():
        raise StageError(f"--source {source}: not a directory")
    out = []
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(source).as_posix()
            if rel != MANIFEST:
                out.append((rel, path))
    return out


def error_of(exc: Exception, bucket: str, key: str | None = None) -> StageError:
    """One clear line for an S3/botocore failure."""
    from botocore.exceptions import ClientError

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ClientError):  # S3UploadFailedError wraps a ClientError
        cause = cause.__cause__ or cause.__context__
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = " ".join(str(error.get("Message", "")).split())[:200]
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
            return StageError(f"bucket {bucket!r} does not exist",
                              f"create it (aws s3 mb s3://{bucket}) or fix --dest")
        if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccessDeniedException"):
            return StageError(f"access denied to {where}",
                              f"the job's AWS identity needs s3:ListBucket, s3:GetObject and s3:PutObject on {bucket}")
        if code in ("ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired"):
            return StageError("AWS credentials have expired",
                              "refresh them (new temporary credentials / instance role) and rerun the stage: "
                              "files already uploaded are skipped")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "InvalidClientTokenId"):
            return StageError(f"AWS did not accept these credentials ({code})",
                              "check AWS_PROFILE / AWS_ACCESS_KEY_ID of the job")
        return StageError(f"S3 request on {where} failed: {code or 'error'}: {message}")
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return StageError("no AWS credentials found",
                          "give the job credentials (instance role, AWS_PROFILE, or env secrets)")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        return StageError(f"cannot reach S3: {' '.join(str(exc).split())[:200]}", "check --endpoint-url and network")
    return StageError(f"upload to {where} failed: {name}: {' '.join(str(exc).split())[:200]}")


def remote_matches(client: Any, bucket: str, key: str, size: int, digest: str) -> bool:
    """True when the object exists with this size and sha256 metadata (then the upload is skipped)."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return bool(head.get("ContentLength") == size and head.get("Metadata", {}).get("sha256") == digest)


def upload(source: Path, bucket: str, prefix: str, client: Any, config: Any = None) -> dict[str, Any]:
    """Upload source under s3://bucket/prefix; returns the manifest (with counts under 'uploaded'/'skipped')."""
    from boto3.exceptions import Boto3Error
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    config = config or TransferConfig(multipart_threshold=64 * MB, multipart_chunksize=64 * MB)
    files = files_of(source)
    try:
        client.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise error_of(exc, bucket) from None
    entries: list[dict[str, Any]] = []
    uploaded = skipped = 0
    for rel, path in files:
        key = key_of(prefix, rel)
        size = path.stat().st_size
        digest = sha256(path)
        entries.append({"path": rel, "size": size, "sha256": digest})
        try:
            if remote_matches(client, bucket, key, size, digest):
                skipped += 1
                log(f"skip    {rel} (already there, same sha256)")
                continue
            client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}, Config=config)
            if not remote_matches(client, bucket, key, size, digest):
                raise StageError(f"verification failed for s3://{bucket}/{key}: size or sha256 differs after upload",
                                 "rerun the stage; if it persists, check the bucket's object lifecycle/rewrite rules")
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise error_of(exc, bucket, key) from None
        uploaded += 1
        log(f"upload  {rel} ({size:,} bytes)")
    manifest = {"files": entries}
    body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    manifest_key = key_of(prefix, MANIFEST)
    try:
        client.put_object(Bucket=bucket, Key=manifest_key, Body=body, ContentType="application/json")
        if client.head_object(Bucket=bucket, Key=manifest_key).get("ContentLength") != len(body):
            raise StageError(f"verification failed for s3://{bucket}/{manifest_key}")
    except (ClientError, BotoCoreError) as exc:
        raise error_of(exc, bucket, manifest_key) from None
    return {**manifest, "uploaded": uploaded, "skipped": skipped}


@entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages upload")
    parser.add_argument("--source", required=True, type=Path, help="directory to upload")
    parser.add_argument("--dest", required=True, help="s3://bucket/prefix")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    parser.add_argument("--region")
    parser.add_argument("--multipart-threshold-mb", type=int, default=64)
    parser.add_argument("--part-size-mb", type=int, default=64, help="multipart part size (S3 minimum: 5)")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    if args.part_size_mb < 5 or args.multipart_threshold_mb < 5:
        raise StageError("--part-size-mb and --multipart-threshold-mb must be at least 5 (the S3 minimum part size)")
    bucket, prefix = parse_dest(args.dest)
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError

    try:
        client = boto3.client("s3", endpoint_url=args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
                              region_name=args.region)
    except BotoCoreError as exc:
        raise error_of(exc, bucket) from None
    config = TransferConfig(multipart_threshold=args.multipart_threshold_mb * MB,
                            multipart_chunksize=args.part_size_mb * MB, max_concurrency=max(1, args.threads))
    result = upload(args.source, bucket, prefix, client, config)
    total = sum(f["size"] for f in result["files"])
    log(f"{len(result['files'])} files, {total:,} bytes at {args.dest.rstrip('/')}/ "
        f"(uploaded {result['uploaded']}, skipped {result['skipped']} unchanged); manifest.json written")
    return 0
