"""Webhook notifications from the job wrapper, against a real HTTP server on loopback: a failing stage on the
local backend posts `stage_failed` and then `run_ended`; a dead webhook never fails a stage; the URL appears in
no script, state, record or log of the run."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from orchestrator import notify
from orchestrator.state import RunPaths, Store
from tests.helpers import latest_run, run_cli, wait_terminal


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, str]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "type": self.headers["Content-Type"], **json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook():
    Hook.received, Hook.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret-part"
    server.shutdown()


def secret_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "webhook"
    path.write_text(url + "\n")
    os.chmod(path, 0o600)
    return path


def every_file_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_failing_stage_posts_failure_then_run_end(write_spec, tmp_path, hook):
    _, url = hook
    path = write_spec(f"""
        name: noisy
        secrets: {{HOOK: {{file: {secret_file(tmp_path, url)}}}}}
        notify: {{webhook: HOOK}}
        stages:
          - {{name: a, kind: command, run: "true"}}
          - {{name: b, kind: command, run: "echo broken >&2; exit 4"}}
          - {{name: c, kind: command, run: "true"}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir)
    assert [s.value for s in states.values()] == ["COMPLETED", "FAILED", "CANCELLED"]
    texts = [m["text"] for m in Hook.received]
    assert len(texts) == 2, texts
    assert "stage b" in texts[0] and "failed: script exited 4" in texts[0] and f"pipeline logs {run_dir.name} b" in texts[0]
    assert "run ended with failures" in texts[1] and run_dir.name in texts[1]
    assert {m["path"] for m in Hook.received} == {"/services/T000/B000/secret-part"}
    assert {m["type"] for m in Hook.received} == {"application/json"}
    assert "secret-part" not in every_file_text(run_dir)


def test_a_dead_webhook_never_fails_the_stage(write_spec, tmp_path, hook):
    _, url = hook
    Hook.status = 500
    path = write_spec(f"""
        name: quiet
        secrets: {{HOOK: {{file: {secret_file(tmp_path, url)}}}}}
        notify: {{webhook: HOOK, events: [run_ended]}}
        stages:
          - {{name: a, kind: command, run: "true"}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    assert [s.value for s in wait_terminal(run_dir).values()] == ["COMPLETED"]
    assert [m["text"].split(": run ")[1][:9] for m in Hook.received] == ["completed"]
    job = Store(run_dir).read().stages["a"].current.job_id
    log = RunPaths(run_dir).log("a", job).read_text()
    assert "notification run_ended not sent: HTTPError: HTTP Error 500" in log
    assert "secret-part" not in every_file_text(run_dir)


def test_requeued_restart_is_announced_and_unreachable_hosts_time_out_quietly(tmp_path, write_spec, hook):
    """A restart (SLURM_RESTART_COUNT > 0, what Slurm sets after a requeue) posts stage_requeued; here the wrapper's
    call is made directly on a real run directory, since the local backend never requeues."""
    _, url = hook
    path = write_spec(f"""
        name: requeue
        secrets: {{HOOK: {{file: {secret_file(tmp_path, url)}}}}}
        notify: {{webhook: HOOK, events: [stage_requeued]}}
        stages:
          - {{name: a, kind: command, run: "true"}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    wait_terminal(run_dir)
    Hook.received.clear()
    log = tmp_path / "a.log"
    notify.stage_started(RunPaths(run_dir), "a", "41", 2, "node-7", log)
    expected = f"{run_dir.name}: stage a (job 41) requeued, restart 2 now running on node-7"
    assert [m["text"] for m in Hook.received] == [expected]
    assert notify.post("http://127.0.0.1:9/", "x", timeout=1.0).startswith("URLError")  # discard port: refused


def test_webhook_must_name_a_declared_secret(write_spec, capsys):
    path = write_spec("""
        name: bad
        notify: {webhook: SLACK_URL}
        stages:
          - {name: a, kind: command, run: "true"}
    """)
    assert run_cli("validate", str(path)) == 1
    err = capsys.readouterr().err
    assert "pipeline.yaml:2" in err and "notify" in err and "SLACK_URL" in err and "secrets:" in err
