"""The one subprocess wrapper: argv lists only, a timeout on every call, errors that carry the output."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.errors import CommandError, PipelineError

DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    hint: str | None = None,
) -> Result:
    """Run argv (never through a shell) and return its output; raise CommandError when check and rc != 0."""
    args = [str(a) for a in argv]
    if shutil.which(args[0], path=(env or os.environ).get("PATH")) is None and os.sep not in args[0]:
        raise PipelineError(f"{args[0]!r} was not found on PATH", hint or f"install {args[0]} or fix PATH")
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            input=input_text,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PipelineError(f"{' '.join(args)} did not answer within {timeout:.0f} s", hint) from exc
    result = Result(args, done.returncode, done.stdout, done.stderr)
    if check and done.returncode != 0:
        raise CommandError(args, done.returncode, done.stdout, done.stderr, hint)
    return result
