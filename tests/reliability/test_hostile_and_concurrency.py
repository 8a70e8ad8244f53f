"""Hostile values never execute; concurrent status/rerun never corrupt the state file (local backend, real)."""

from __future__ import annotations

import json
import subprocess
import sys

from orchestrator import state
from orchestrator.states import JobState
from tests.helpers import latest_run, run_cli, wait_terminal

S = JobState


def test_hostile_values_never_execute(write_spec, tmp_path):
    marker = tmp_path / "MARKER"
    evil = f"$(touch {marker}) `touch {marker}`; touch {marker} ' \" \n x"
    token = json.dumps(evil)  # a YAML double-quoted string with every nasty character
    evil_dir = json.dumps(f"{tmp_path}/dir with space; $(touch {marker})")
    path = write_spec(f"""
        name: hostile
        env: {{EVIL: {token}}}
        stages:
          - name: a
            kind: command
            params: {{value: {token}, path: {evil_dir}}}
            env: {{ALSO: {token}}}
            run: 'printf "%s\\n" "$PARAM_VALUE" "$EVIL" "$ALSO"; mkdir -p "$PARAM_PATH"'
          - name: b
            kind: command
            run: 'echo done'
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    assert wait_terminal(run_dir) == {"a": S.COMPLETED, "b": S.COMPLETED}
    assert not marker.exists()
    log = next((run_dir / "logs").glob("a.*.log")).read_text()
    assert f"$(touch {marker})" in log  # the value arrived verbatim, as data


def test_twenty_status_processes_while_rerun(write_spec):
    path = write_spec("""
        name: busy
        stages:
          - {name: a, kind: command, run: "true"}
          - {name: b, kind: command, run: "exit 1"}
          - {name: c, kind: command, run: "true"}
    """)
    run_cli("submit", str(path))
    run_dir = latest_run()
    wait_terminal(run_dir)
    readers = [subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "status", str(run_dir), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(20)]
    assert run_cli("rerun", run_dir.name) == 0
    outputs = [r.communicate(timeout=120) for r in readers]
    assert all(r.returncode == 0 for r in readers), [o[1] for o in outputs]
    for out, _ in outputs:
        json.loads(out)  # every reader saw a complete, valid state
    wait_terminal(run_dir)
    saved = state.Store(run_dir).read()
    # The rerun's new attempts were not lost to a concurrent status write.
    assert len(saved.stages["b"].attempts) == 2 and len(saved.stages["c"].attempts) == 2
    assert len(saved.stages["a"].attempts) == 1
