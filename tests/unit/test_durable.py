"""The run directory of a sweep is made durable with one filesystem barrier, not one fsync per script
(issue 14 item 7: 385 fsyncs were 1.5 s of a 64-variant submit), and still before the run becomes visible.

Real files on the real filesystem; only os.fsync and durable._syncfs are wrapped to count calls and to note
what exists at that moment."""

from __future__ import annotations

import os
import stat

import pytest

from orchestrator import apply, durable, loader, plan

SWEEP = """
    name: sw
    stages:
      - {name: download, kind: command, run: "echo model > model.txt", outputs: [model.txt]}
      - {name: finetune, kind: command, params: {lr: 1}, run: "echo $PARAM_LR > adapter.txt"}
      - {name: merge, kind: command, run: "true"}
    sweep:
      grid:
        stages.finetune.params.lr: [1, 2, 3, 4, 5, 6, 7, 8]
"""


@pytest.fixture
def counted(monkeypatch):
    calls: dict[str, list] = {"fsync": [], "syncfs": []}
    real_fsync, real_syncfs = os.fsync, durable._syncfs

    def fsync(fd):
        calls["fsync"].append(fd)
        real_fsync(fd)

    def syncfs(root):
        # what must be on disk by now: every script, and the run not yet visible under its final name
        calls["syncfs"].append((root, sorted(p.name for p in (root / "scripts").iterdir()),
                                sorted(p.name for p in root.parent.iterdir() if not p.name.startswith("."))))
        return real_syncfs(root)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(durable, "_syncfs", syncfs)
    return calls


def test_sweep_run_dir_is_one_barrier_not_one_fsync_per_script(write_spec, tmp_path, counted):
    loaded = loader.load(write_spec(SWEEP))
    built = plan.build(loaded)
    scripts = [s.name for s in built.stages]
    assert len(scripts) == 1 + 2 * 8
    store = apply.create_run(loaded, built, tmp_path / "runs")
    # old code: one fsync per script + spec copy + plan + state + index = 21; now plan, state and index only
    assert len(counted["fsync"]) <= 3
    [(root, on_disk, visible)] = counted["syncfs"]
    assert root.name.startswith(".") and root.name.endswith(".creating")  # the staging folder, before the rename
    assert on_disk == sorted(f"{n}.sh" for n in scripts)
    assert visible == []
    for name in scripts:
        path = store.paths.script(name)
        assert path.read_text() == built.stage(name).script
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert store.paths.spec_copy.read_text() == (tmp_path / "pipeline.yaml").read_text()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [store.paths.root.name]  # no staging folder left


def test_without_syncfs_every_file_and_folder_is_fsynced(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    for name in ("x", "a/y", "a/z"):
        durable.write_staged(tmp_path / name, name, mode=0o755)
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(durable, "_syncfs", lambda root: False)
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    durable.sync_tree(tmp_path)
    assert sorted(synced) == sorted(os.path.normpath(tmp_path / n) for n in ("", "a", "x", "a/y", "a/z"))


def test_syncfs_is_really_called_on_linux(tmp_path):
    """The real syncfs(2) through libc, not the fallback (this suite runs on Linux)."""
    assert durable._syncfs(tmp_path) is True
