"""Shared fixtures. Every test gets its own PIPELINE_HOME so no test touches a user's ~/.pipeline."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

pytest_plugins = ["tests.slurm_fixture"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def pipeline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "pipeline-home"
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("PIPELINE_RUN_ROOT", raising=False)
    return home


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write
