"""State file: atomic writes under a lock; concurrent updaters lose nothing."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from orchestrator.errors import StateError
from orchestrator.state import Attempt, RunState, StageState, Store


def _make(tmp_path: Path) -> Store:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store = Store(run_dir)
    store.create(RunState(run_id="r", pipeline="p", scheduler="fake", cluster="c", spec_sha256="x",
                          stages={"s": StageState(after=[])}))
    return store


def _append(run_dir: str, count: int, tag: str) -> None:
    store = Store(Path(run_dir))
    for i in range(count):
        with store.update() as state:
            state.stages["s"].attempts.append(Attempt(job_id=f"{tag}-{i}"))


def test_concurrent_updates_lose_nothing(tmp_path):
    store = _make(tmp_path)
    procs = [multiprocessing.Process(target=_append, args=(str(store.paths.root), 25, f"p{n}")) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    attempts = store.read().stages["s"].attempts
    assert len(attempts) == 100 and len({a.job_id for a in attempts}) == 100


def test_corrupt_and_foreign_state_files_are_clear_errors(tmp_path):
    store = _make(tmp_path)
    store.paths.state.write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        store.read()
    store.paths.state.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(StateError, match="schema version 99"):
        store.read()


def test_failed_update_block_writes_nothing(tmp_path):
    store = _make(tmp_path)
    with pytest.raises(RuntimeError), store.update() as state:
        state.stages["s"].attempts.append(Attempt(job_id="x"))
        raise RuntimeError("boom")
    assert store.read().stages["s"].attempts == []


def test_sweep_removes_only_dead_local_staging_folders(tmp_path):
    """A killed submit's half-built run folder (nothing was submitted from it) is removed by the next submit;
    a live process's is kept, and so is an old-enough-to-matter one of another host until it is a day old."""
    import os
    import subprocess

    from orchestrator import state

    dead = subprocess.Popen(["true"])
    dead.wait()
    mine_dead = tmp_path / state.staging_dir(tmp_path, "p-1").name.replace(f".{os.getpid()}.", f".{dead.pid}.")
    mine_alive = state.staging_dir(tmp_path, "p-2")
    other_host = tmp_path / f".p-3.otherhost.{dead.pid}.creating"
    for folder in (mine_dead, mine_alive, other_host):
        folder.mkdir()
        (folder / ".state.json.123.tmp").write_text("{")
    removed = state.sweep_abandoned(tmp_path)
    assert removed == [mine_dead] and mine_alive.exists() and other_host.exists()
