"""download: model + tokenizer from the Hugging Face Hub, S3, a local path, or `tiny` (built here).

A GGUF file (`gguf://<package>/<file>.gguf` or a path ending in .gguf: stages/gguf_source.py) is de-quantised
once into HF safetensors. The Hub token is read at run time (HF_TOKEN, or --token-file with mode 0600) and never
printed. A missing token or an incomplete download exits non-zero (the reference get_model.py exited 0:
stages.md defect 2), and the safetensors are kept as published rather than re-saved in fp32 (defect 15).
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
from pathlib import Path

from stages import gguf_source
from stages.common import StageError, entry, log, require_model_dir, write_manifest

# What no stage of the chain reads: Meta's consolidated .pth copies under original/ (twice the bytes for Llama 3).
# Seed 002 downloads with `--ignore-patterns "original/consolidated*"` (awsome-distributed-training
# 3.test_cases/torchtune/slurm/tutorials/e2e-llama3-70b-development); every Hub download here does the same.
IGNORE_PATTERNS = ["original/consolidated*"]


def token(token_file: Path | None) -> str | None:
    if token_file is not None:
        info = token_file.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StageError(f"{token_file} is readable by others", f"chmod 600 {token_file}")
        return token_file.read_text(encoding="utf-8").strip() or None
    return os.environ.get("HF_TOKEN") or None


def from_hub(repo_id: str, output: Path, patterns: list[str], hf_token: str | None, repo_type: str = "model") -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        # Resumable: files already complete in local_dir are not fetched again.
        snapshot_download(repo_id, repo_type=repo_type, local_dir=output, allow_patterns=patterns or None,
                          ignore_patterns=IGNORE_PATTERNS if repo_type == "model" else None, token=hf_token)
    except GatedRepoError:
        raise StageError(f"{repo_id} is gated and {'the token has no access' if hf_token else 'no HF_TOKEN is set'}",
                         "accept the licence on the Hub and give the pipeline a token (secrets: HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise StageError(f"{repo_id}: no such repository, or it is private and no token was given") from None
    except (HfHubHTTPError, OSError) as exc:
        raise StageError(f"download of {repo_id} failed: {type(exc).__name__}: {str(exc)[:300]}",
                         "rerun the stage: finished files are kept") from None


def from_s3(url: str, output: Path, endpoint: str | None) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL"))
    count = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):].lstrip("/")
                if not rel:
                    continue
                target = output / rel
                if target.is_file() and target.stat().st_size == obj["Size"]:
                    continue  # resumable: complete files are kept
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(target))
                count += 1
    except ClientError as exc:
        raise StageError(f"{url}: {exc.response['Error'].get('Code')}: {exc.response['Error'].get('Message')}") from None
    except BotoCoreError as exc:
        raise StageError(f"{url}: {exc}") from None
    log(f"downloaded {count} object(s) from {url}")


@entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages download")
    parser.add_argument("--source", required=True, help="tiny | hf://<repo> | s3://bucket/prefix | "
                        "gguf://<package>/<file>.gguf | a .gguf file | a local model directory")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--dataset", type=Path, help="for `tiny`: the text its tokenizer is trained on")
    parser.add_argument("--allow-patterns", action="append", default=[])
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--s3-endpoint-url")
    parser.add_argument("--require-weights", action="store_true", help="(always on; kept for old scripts)")
    args = parser.parse_args(argv)
    source: str = args.source
    args.output.mkdir(parents=True, exist_ok=True)
    if source == "tiny":
        from stages import tiny

        if args.dataset is None:
            raise StageError("--source tiny needs --dataset (its tokenizer is trained on that text)")
        tiny.build(args.dataset, args.output)
    elif source.startswith("hf://"):
        from_hub(source.removeprefix("hf://"), args.output, args.allow_patterns, token(args.token_file))
    elif source.startswith("s3://"):
        from_s3(source, args.output, args.s3_endpoint_url)
    elif gguf_source.is_gguf_source(source):
        gguf_source.convert(source, args.output)
    else:
        local = Path(source)
        if not local.is_dir():
            raise StageError(f"{source}: not a directory, hf://repo, s3:// URL or GGUF file",
                             "model_source: tiny | hf://<repo> | s3://bucket/prefix | gguf://<package>/<file>.gguf")
        shutil.copytree(local, args.output, dirs_exist_ok=True)
    require_model_dir(args.output)
    manifest = write_manifest(args.output)
    log(f"{len(manifest['files'])} files, {sum(f['size'] for f in manifest['files']):,} bytes in {args.output}")
    return 0
