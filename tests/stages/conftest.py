"""Shared by the stage program tests: run `python -m stages ...` as a job would, and one tiny model per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

DATA = REPO / "examples" / "data" / "dolly-tiny.jsonl"


def stage(*argv: str, check: bool = True, env: dict[str, str] | None = None,
          **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "stages", *argv], capture_output=True, text=True, env=env,
                         timeout=600, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"stages {argv[0]} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Llama and its tokenizer, built offline from the shipped dataset (read-only for the tests)."""
    model = tmp_path_factory.mktemp("tiny") / "model"
    stage("download", "--source", "tiny", "--dataset", str(DATA), "--output", str(model))
    return model
