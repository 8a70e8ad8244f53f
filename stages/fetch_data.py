"""fetch-data: a dataset from the Hugging Face Hub (``hf://datasets/<owner>/<name>``), S3 or a local path,
written as one validated JSONL file that the finetune and evaluate stages read.

Rows are checked before anything trains: a malformed row names its source file and row number. JSONL and JSON
are read as they are; Parquet (how most Hub datasets are published, e.g. no_robots) needs pyarrow. The Hub
token is read at run time from HF_TOKEN (or --token-file), like the model download.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path
from typing import Any

from stages import data as datalib
from stages import download
from stages.common import StageError, entry, log, sha256, write_json

READABLE = ("*.jsonl", "*.json", "*.parquet")


def fetch(source: str, raw: Path, patterns: list[str], token_file: Path | None, s3_endpoint: str | None) -> Path:
    """Bring the source's files under ``raw`` (resumable) and return the directory or file to read."""
    if source.startswith("hf://datasets/"):
        repo = source.removeprefix("hf://datasets/").strip("/")
        download.from_hub(repo, raw, patterns or list(READABLE), download.token(token_file), repo_type="dataset")
        return raw
    if source.startswith("s3://"):
        download.from_s3(source, raw, s3_endpoint)
        return raw
    if source.startswith("hf://"):
        raise StageError(f"{source}: a Hub dataset is hf://datasets/<owner>/<name>")
    local = Path(source)
    if not local.exists():
        raise StageError(f"{source}: no such file or directory")
    return local


def select(root: Path, patterns: list[str]) -> list[Path]:
    """The data files under root; without patterns, training splits are preferred when a repo has several."""
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    wanted = [p for p in files if any(fnmatch.fnmatch(p.relative_to(root).as_posix(), g) or fnmatch.fnmatch(p.name, g)
                                      for g in patterns or READABLE)]
    if not patterns:
        train = [p for p in wanted if "train" in p.relative_to(root).as_posix().lower()]
        wanted = train or wanted
    if not wanted:
        raise StageError(f"{root}: no data files matching {', '.join(patterns or READABLE)}",
                         "set settings.data_files to the file name(s) in the dataset")
    return wanted


def rows_of(path: Path) -> list[dict[str, Any]]:
    """Rows with their ``_line`` (1-based row or line number) so validation errors point at the source."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise StageError(f"{path}: reading Parquet needs pyarrow", "pip install pyarrow on the cluster") from None
        rows = pq.read_table(path).to_pylist()
        return [{**row, "_line": i} for i, row in enumerate(rows, start=1)]
    if path.suffix == ".json":
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StageError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(loaded, list) or not all(isinstance(r, dict) for r in loaded):
            raise StageError(f"{path}: a .json dataset must be a list of objects", "or ship it as JSONL")
        return [{**row, "_line": i} for i, row in enumerate(loaded, start=1)]
    return datalib.read_jsonl(path)


def write_rows(rows: list[dict[str, Any]], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({k: v for k, v in row.items() if k != "_line"}, ensure_ascii=False) + "\n"
                          for row in rows)
    tmp.replace(output)  # atomic: a half-written dataset is never what finetune reads


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages fetch-data")
    p.add_argument("--source", required=True, help="hf://datasets/<owner>/<name> | s3://bucket/prefix | a path")
    p.add_argument("--files", action="append", default=[], help="glob(s) of the files to use (default: training split)")
    p.add_argument("--format", choices=["dolly", "chat"], default="dolly")
    p.add_argument("--output", required=True, type=Path, help="the JSONL file to write")
    p.add_argument("--token-file", type=Path)
    p.add_argument("--s3-endpoint-url")
    args = p.parse_args(argv)
    root = fetch(args.source, args.output.parent / "raw", args.files, args.token_file, args.s3_endpoint_url)
    rows: list[dict[str, Any]] = []
    sources = []
    for path in select(root, args.files):
        part = rows_of(path)
        if not part:
            raise StageError(f"{path}: the file is empty", "a dataset needs at least one row")
        datalib.validate(path, part, args.format)
        rows.extend(part)
        sources.append({"file": str(path), "rows": len(part), "sha256": sha256(path)})
        log(f"{path}: {len(part)} rows")
    write_rows(rows, args.output)
    write_json(args.output.with_suffix(".manifest.json"),
               {"source": args.source, "format": args.format, "rows": len(rows), "files": sources,
                "output_sha256": sha256(args.output)})
    log(f"{len(rows)} rows from {args.source} -> {args.output}")
    return 0
