"""The embedded default: cluster `local` runs the DAG on this machine with a detached driver, for real."""

from __future__ import annotations

import hashlib
import json
import subprocess

from orchestrator import state
from orchestrator.states import JobState
from tests.helpers import latest_run, run_cli, wait_state, wait_terminal

S = JobState


def test_chain_completes_and_status_says_so(write_spec, capsys):
    path = write_spec("""
        name: ok
        stages:
          - {name: a, kind: command, run: "echo alpha > a.txt", outputs: [a.txt]}
          - {name: b, kind: command, run: "cat a.txt; echo beta"}
          - {name: c, kind: command, after: [a], run: "echo gamma"}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    assert wait_terminal(run_dir) == {"a": S.COMPLETED, "b": S.COMPLETED, "c": S.COMPLETED}
    capsys.readouterr()
    assert run_cli("status", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stages"]["b"]["attempts"][0]["exit_code"] == 0
    assert run_cli("logs", run_dir.name, "b") == 0
    assert "alpha" in capsys.readouterr().out


def test_failure_cancels_dependents_and_rerun_finishes(write_spec, tmp_path):
    flag = tmp_path / "second-try"
    path = write_spec(f"""
        name: flaky
        stages:
          - {{name: a, kind: command, run: "true"}}
          - {{name: b, kind: command, run: "test -f {flag} || {{ touch {flag}; echo first try fails >&2; exit 4; }}"}}
          - {{name: c, kind: command, run: "echo downstream"}}
    """)
    run_cli("submit", str(path))
    run_dir = latest_run()
    states = wait_terminal(run_dir)
    assert states == {"a": S.COMPLETED, "b": S.FAILED, "c": S.CANCELLED}
    assert state.Store(run_dir).read().stages["b"].current.exit_code == 4
    assert run_cli("rerun", run_dir.name) == 0
    assert wait_terminal(run_dir) == {"a": S.COMPLETED, "b": S.COMPLETED, "c": S.COMPLETED}
    saved = state.Store(run_dir).read()
    assert len(saved.stages["a"].attempts) == 1 and len(saved.stages["b"].attempts) == 2


def test_cancel_running_stage(write_spec):
    path = write_spec("""
        name: slow
        stages:
          - {name: a, kind: command, run: "sleep 60"}
          - {name: b, kind: command, run: "true"}
    """)
    run_cli("submit", str(path))
    run_dir = latest_run()
    wait_state(run_dir, "a", S.RUNNING)
    assert run_cli("rerun", run_dir.name, "--stage", "a") == 1  # refuses: still running
    assert run_cli("cancel", run_dir.name) == 0
    assert wait_terminal(run_dir, timeout=30) == {"a": S.CANCELLED, "b": S.CANCELLED}
    leftover = subprocess.run(["pgrep", "-f", f"{run_dir}/scripts/a.sh"], capture_output=True)
    assert leftover.returncode == 1, "cancel left the stage's processes running"


def test_missing_declared_output_fails_the_stage(write_spec):
    path = write_spec("""
        name: outputs
        stages:
          - {name: a, kind: command, run: "echo pretend success", outputs: [model/config.json]}
          - {name: b, kind: command, run: "true"}
    """)
    run_cli("submit", str(path))
    run_dir = latest_run()
    assert wait_terminal(run_dir) == {"a": S.FAILED, "b": S.CANCELLED}
    assert "declared outputs missing: model/config.json" in state.Store(run_dir).read().stages["a"].current.reason


def test_secret_reaches_the_stage_but_no_file(write_spec, tmp_path, monkeypatch):
    token = "hf_SECRETVALUE1234567890"
    digest = hashlib.sha256(token.encode()).hexdigest()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    # The spec holds only the token's hash, so any hit below is a leak by pipeline itself.
    path = write_spec(f"""
        name: secret
        secrets:
          HF_TOKEN: {{file: {token_file}}}
        stages:
          - {{name: a, kind: command, run: 'test "$(printf %s "$HF_TOKEN" | sha256sum | cut -d" " -f1)" = {digest} && echo "token is $HF_TOKEN"'}}
    """)
    monkeypatch.setenv("HF_TOKEN", token)  # also in the submitter's shell: must not leak from there either
    run_cli("submit", str(path))
    run_dir = latest_run()
    assert wait_terminal(run_dir) == {"a": S.COMPLETED}
    hits = [p for p in run_dir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert hits == []
    log = next((run_dir / "logs").glob("a.*.log")).read_text()
    assert "token is ***" in log


def test_world_readable_secret_file_fails_clearly(write_spec, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("x")
    token_file.chmod(0o644)
    path = write_spec(f"""
        name: badsecret
        secrets: {{HF_TOKEN: {{file: {token_file}}}}}
        stages: [{{name: a, kind: command, run: "true"}}]
    """)
    run_cli("submit", str(path))
    run_dir = latest_run()
    assert wait_terminal(run_dir) == {"a": S.FAILED}
    assert "chmod 600" in next((run_dir / "logs").glob("a.*.log")).read_text()


def test_bad_spec_submits_nothing(write_spec, pipeline_home, capsys):
    path = write_spec("""
        name: bad
        stages:
          - {name: a, kind: command, run: "true"}
          - {name: b, kind: command, run: "true", resources: {nodes: -1}}
    """)
    assert run_cli("submit", str(path)) == 1
    err = capsys.readouterr().err
    assert f"{path}:4: stages[1].resources.nodes: Input should be greater than 0" in err
    assert not (pipeline_home / "runs").exists() and not (pipeline_home / "index").exists()
