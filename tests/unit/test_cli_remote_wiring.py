"""CLI wiring of remote mode: which argv and files reach orchestrator.remote.forward.

forward() itself runs against a real OpenSSH server in tests/remote; here it is replaced by a recorder
because only the CLI's choice of arguments is under test.
"""

from __future__ import annotations

import pytest

from orchestrator import cli, remote


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(remote, "forward", lambda target, argv, uploads=None: seen.append((target, argv, uploads)) or 7)
    monkeypatch.delenv(remote.FORWARDED_ENV, raising=False)
    return seen


def test_host_flag_forwards_the_verb_and_uploads_the_spec(write_spec, calls, tmp_path):
    (tmp_path / "data.jsonl").write_text("{}\n")
    path = write_spec("""
        name: p
        family: hf
        settings: {data: data.jsonl}
        stages: [{name: a, kind: download}]
    """)
    assert cli.main(["--host", "me@head:2222", "submit", str(path), "--wait"]) == 7
    target, argv, uploads = calls[0]
    assert (target.host, target.user, target.port) == ("head", "me", 2222)
    assert argv == ["submit", str(path), "--wait"]
    assert path in uploads and tmp_path / "data.jsonl" in uploads


def test_status_forwards_without_uploads(calls):
    assert cli.main(["--host", "head", "status", "run-1", "--json"]) == 7
    assert calls[0][1] == ["status", "run-1", "--json"] and calls[0][2] is None


def test_cluster_profile_with_remote_forwards_submit(write_spec, calls):
    path = write_spec("""
        name: p
        cluster: {name: hp, remote: {host: head.example, user: ubuntu, pipeline: /fsx/venv/bin/pipeline}}
        stages: [{name: a, kind: command, run: "true"}]
    """)
    assert cli.main(["submit", str(path)]) == 7
    target, argv, uploads = calls[0]
    assert target.host == "head.example" and target.pipeline == "/fsx/venv/bin/pipeline"
    assert argv == ["submit", str(path)] and uploads[0] == path


def test_forwarded_run_does_not_forward_again(write_spec, calls, monkeypatch, capsys):
    monkeypatch.setenv(remote.FORWARDED_ENV, "1")
    path = write_spec("""
        name: p
        cluster: {name: hp, remote: {host: head.example}}
        stages: [{name: a, kind: command, run: "true"}]
    """)
    assert cli.main(["validate", str(path)]) == 0 and calls == []
