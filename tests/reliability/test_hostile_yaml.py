"""Hostile YAML (issue 13, item 8): an alias bomb and deep nesting fail fast, with bounded memory and a
located one-line message, before pydantic or anything else walks the data.

Each spec is validated by a fresh `python -m orchestrator.cli validate` under a 1 GiB address-space limit and a
10 s timeout, so the old code's failure (20 s+ and 2.5 GB for the bomb, a RecursionError traceback for the
nesting) shows up as a failed assertion, not a hung or swapping test run.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

LIMIT_BYTES = 1 << 30


def billion_laughs(levels: int = 10) -> str:
    lines = ["name: bomb", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append(f"stages: [{{name: s, kind: command, run: echo, params: {{x: *a{levels - 1}}}}}]")
    return "\n".join(lines) + "\n"


def deep_flow(depth: int = 5000) -> str:
    return "name: deep\nstages: [{name: s, kind: command, run: echo}]\nsettings: {x: " + "[" * depth + "]" * depth + "}\n"


def deep_block(depth: int = 400) -> str:
    return "name: deep\nstages: [{name: s, kind: command, run: echo}]\nsettings:\n" + "".join(
        " " * (i + 1) + f"k{i}:\n" for i in range(depth)) + " " * (depth + 1) + "x: 1\n"


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def validate(path: Path) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=10, preexec_fn=_limit)
    except subprocess.TimeoutExpired:
        return -1, "timed out after 10 s", 10.0
    return done.returncode, done.stderr, time.perf_counter() - start


def baseline(tmp_path: Path) -> float:
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: ok\nstages: [{name: s, kind: command, run: echo}]\n")
    code, err, seconds = validate(ok)
    assert code == 0, err
    return seconds


@pytest.mark.parametrize("make,expect,line", [
    (billion_laughs, "aliases here expand to", 6),  # a4: the first anchor past 100,000 values,
    (deep_flow, "nested more than 64 levels", 3),
    (deep_block, "nested more than 64 levels", 67),
])
def test_hostile_yaml_fails_fast_and_located(make, expect, line, tmp_path):
    path = tmp_path / "hostile.yaml"
    path.write_text(make())
    start_cost = baseline(tmp_path)  # interpreter + imports, to isolate the time spent on the file itself
    code, err, seconds = validate(path)
    assert code == 1, err[-500:]
    assert "Traceback" not in err and "RecursionError" not in err
    assert f"{path}:{line}: " in err and expect in err, err
    assert len(err.strip().splitlines()) <= 2  # the message and its hint
    assert seconds - start_cost < 0.5, f"{seconds:.2f} s vs {start_cost:.2f} s for a valid spec"


def test_ordinary_anchors_still_work(write_spec):
    from orchestrator import loader

    path = write_spec("""
        name: anchors
        x-res: &res {nodes: 2, time: "00:10:00"}
        stages:
          - {name: a, kind: command, run: echo, resources: *res}
          - {name: b, kind: command, run: echo, resources: *res}
    """)
    with pytest.raises(Exception) as info:  # x-res is an unknown top-level key, reported at its own line
        loader.load(path)
    assert f"{path}:2: x-res: unknown key" in str(info.value)
    path = write_spec("""
        name: anchors
        stages:
          - {name: a, kind: command, run: echo, resources: &res {nodes: 2, time: "00:10:00"}}
          - {name: b, kind: command, run: echo, resources: *res}
    """)
    loaded = loader.load(path)
    assert [s.resources.nodes for s in loaded.pipeline.stages] == [2, 2]
