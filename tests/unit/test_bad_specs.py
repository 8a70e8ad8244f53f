"""A corpus of malformed pipeline files: each exits 1 with a located, clear message and submits nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import run_cli

CORPUS = sorted((REPO / "tests" / "badspecs").glob("*.yaml"))


def expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ")


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_spec_is_rejected_with_location(path, capsys, pipeline_home):
    assert run_cli("submit", str(path)) == 1
    err = capsys.readouterr().err
    assert expectation(path) in err
    assert re.search(rf"{re.escape(str(path))}:\d+", err), f"no file:line in: {err}"
    assert "Traceback" not in err
    assert not (pipeline_home / "index").exists()  # nothing was submitted, no run was created


@pytest.mark.parametrize("make", ["empty", "directory", "binary", "huge", "missing"])
def test_files_that_are_not_yaml(make, tmp_path, capsys):
    target = tmp_path / f"{make}.yaml"
    if make == "empty":
        target.write_text("")
    elif make == "directory":
        target.mkdir()
    elif make == "binary":
        target.write_bytes(os.urandom(256) + b"\x00")
    elif make == "huge":
        target.write_text("# " + "x" * 2_000_000)
    assert run_cli("submit", str(target)) == 1
    err = capsys.readouterr().err
    assert str(target) in err and "Traceback" not in err
