"""tune-config: finish a torchtune config at run time, from the files actually present.

The spec's settings become a config when the pipeline is rendered; what only the job can know is merged in
here: the checkpoint files of the model directory (counted, never listed by hand: the seed's evaluate and
quantize configs named one shard twice, stages.md defect 21), the tokenizer, output paths, and whether a
requeued finetune should resume from torchtune's own recipe state.

    python -m stages tune-config --output CONFIG.yaml --checkpoint-dir DIR [--tokenizer PATH]
                                 [--set key.path=value ...] [--resume-if FILE]  < config.json
    python -m stages tune-config --check-model DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from stages.common import StageError, entry, log

SHARD = re.compile(r"model-(\d+)-of-(\d+)\.safetensors")


def checkpoint_files(directory: Path) -> list[str]:
    """torchtune's checkpoint_files for a Hugging Face model directory: the safetensors files present, in shard
    order, after checking a sharded set is complete. Always a list, never the {filename_format, max_filename}
    form the checkpointer also accepts: torchtune 0.6.1 recipes/quantize.py names its output after
    `cfg.checkpointer.checkpoint_files[0]`, which on that mapping is an omegaconf ConfigKeyError after the
    whole model was quantized."""
    if not directory.is_dir():
        raise StageError(f"{directory}: no such model directory", "did the download (or finetune) stage finish?")
    shards: dict[int, str] = {}
    totals: set[str] = set()
    for path in directory.glob("model-*-of-*.safetensors"):
        match = SHARD.fullmatch(path.name)
        if match:
            shards[int(match.group(1))] = path.name
            totals.add(match.group(2))
    if shards:
        if len(totals) != 1:
            raise StageError(f"{directory}: shards of different sets ({', '.join(sorted(totals))} files)",
                             "remove the stale files of an earlier download")
        total = totals.pop()
        missing = [i for i in range(1, int(total) + 1) if i not in shards]
        if missing:
            raise StageError(f"{directory}: {len(missing)} of {int(total)} safetensors shards missing "
                             f"(e.g. model-{missing[0]:0{len(total)}d}-of-{total}.safetensors)",
                             "rerun the download stage: it resumes")
        return [shards[i] for i in sorted(shards)]
    single = sorted(p.name for p in directory.glob("*.safetensors") if not p.name.startswith("adapter"))
    if not single:
        raise StageError(f"{directory}: no model safetensors files", "did the download (or finetune) stage finish?")
    return single


def check_model(directory: Path) -> None:
    if not (directory / "config.json").is_file():
        raise StageError(f"{directory}: no config.json, so the download is incomplete")
    files = checkpoint_files(directory)
    tokenizer = directory / "original" / "tokenizer.model"
    if not tokenizer.is_file():
        raise StageError(f"{tokenizer}: missing; torchtune's Llama 3 tokenizer reads it",
                         "download without excluding original/tokenizer.model")
    log(f"model {directory}: {files}")


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise StageError(f"--set {dotted}: {key!r} is not a mapping in the config")
        node = child
    node[keys[-1]] = value


def build(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if args.checkpoint_dir is not None:
        set_path(config, "checkpointer.checkpoint_dir", str(args.checkpoint_dir))
        set_path(config, "checkpointer.checkpoint_files", checkpoint_files(args.checkpoint_dir))
    if args.tokenizer is not None:
        if not args.tokenizer.is_file():
            raise StageError(f"{args.tokenizer}: tokenizer file missing")
        set_path(config, "tokenizer.path", str(args.tokenizer))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StageError(f"--set {item!r}: expected key.path=value")
        set_path(config, key, value)
    if args.resume_if is not None and args.resume_if.is_file():
        # A requeued finetune: torchtune reloads the newest epoch and its optimizer/recipe state itself.
        log(f"{args.resume_if} exists: resuming from torchtune's recipe state")
        config["resume_from_checkpoint"] = True
    return config


def write_yaml(path: Path, config: dict[str, Any]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages tune-config")
    p.add_argument("--output", type=Path)
    p.add_argument("--checkpoint-dir", type=Path)
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--resume-if", type=Path)
    p.add_argument("--check-model", type=Path)
    args = p.parse_args(argv)
    if args.check_model is not None:
        check_model(args.check_model)
        return 0
    if args.output is None:
        raise StageError("--output is required (or --check-model DIR)")
    try:
        config = json.loads(sys.stdin.read())
    except json.JSONDecodeError as exc:
        raise StageError(f"the config on stdin is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise StageError("the config on stdin must be a JSON object")
    write_yaml(args.output, build(config, args))
    log(f"torchtune config -> {args.output}")
    return 0
