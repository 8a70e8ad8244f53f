"""What every stage program shares: one error type, the exit path, checkpoint discovery, manifests."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from stages.history import note


class StageError(Exception):
    """A clear failure: printed as one line (plus a hint) and the program exits non-zero, so afterok holds."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Main(Protocol):
    """A stage program's main: argv defaults to sys.argv[1:] (argparse), so `main()` is a valid call."""

    def __call__(self, argv: list[str] | None = None) -> int: ...


def entry(func: Callable[[list[str] | None], int]) -> Main:
    """Wrap a main(): StageError -> 'error: ...' on stderr and exit code 2 (never a false success)."""

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        from stages import tracking

        try:
            rc = func(argv)
        except StageError as exc:
            print(f"error: {exc}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr, flush=True)
            rc = 2
        tracking.end(rc == 0)  # the MLflow run (if any) ends FINISHED or FAILED with the program
        return rc

    return wrapper


def progress(**fields: Any) -> None:
    """Tell `pipeline status` how far this job is (rank 0 only; no-op outside a pipeline job). Tagged with the
    job id so status never shows a previous attempt's numbers as the current one's."""
    target = os.environ.get("PIPELINE_PROGRESS_FILE")
    if target and int(os.environ.get("RANK", "0")) == 0:
        write_json(Path(target), {"job_id": os.environ.get("PIPELINE_JOB_ID"), **fields})




def metric(**fields: Any) -> None:
    """Append one logged step (step, loss, lr, grad_norm, tokens_per_s, or eval numbers) to this attempt's
    metrics history, read by `pipeline report` (rank 0 only; no-op outside a pipeline job). Each line carries
    the job id, the restart count and the time, so requeues and resumes of one stage form one curve. With
    `tracking:` in the spec, the same numbers go to the experiment tracker (stages/tracking.py)."""
    from stages import tracking

    note(**fields)
    tracking.metrics(fields["step"] if isinstance(fields.get("step"), int) else None, fields)


def log(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, flush=True)


def newest_checkpoint(directory: Path, marker: str = "done") -> Path | None:
    """The newest checkpoint-<N> whose completion marker exists (written last), never a hard-coded step.

    `marker` is relative to checkpoint-<N>: our finetune writes `done` there; optimum-neuron saves through NxD's
    save_checkpoint, which writes `done` inside the tag folder (e.g. `adapter_default/adapter_shards/done`)."""
    best: tuple[int, Path] | None = None
    if not directory.is_dir():
        return None
    for path in directory.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / marker).is_file():
            step = int(match.group(1))
            if best is None or step > best[0]:
                best = (step, path)
    return best[1] if best else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def write_manifest(directory: Path) -> dict[str, Any]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {"files": [{"path": str(p.relative_to(directory)), "size": p.stat().st_size, "sha256": sha256(p)}
                          for p in files]}
    write_json(directory / "manifest.json", manifest)
    return manifest


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """The from_pretrained keyword for a dtype under the transformers the job's env pins: `dtype` exists from
    4.56 (huggingface/transformers#39782 deprecated `torch_dtype`); the nxd env pins 4.48.0, which knows only
    `torch_dtype` and would pass an unknown `dtype` on to the model's __init__ (TypeError)."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def require_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise StageError(f"{path}: no config.json, so this is not a model directory",
                         "did the download stage finish? `pipeline status` shows it")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise StageError(f"{path}: config.json but no weights (*.safetensors)")
