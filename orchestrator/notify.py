"""Webhook notifications, sent by the job wrapper (orchestrator/jobside.py) so they need nobody logged in:
a stage failed, a stage was requeued (it starts again with SLURM_RESTART_COUNT > 0), the run ended.

The body is Slack's incoming-webhook JSON, {"text": "..."} (api.slack.com/messaging/webhooks), which Mattermost,
Rocket.Chat, Teams workflows and Discord's /slack endpoint accept too. The URL is a run-time secret: resolved here
(orchestrator/secrets.py), never written anywhere; a failing webhook is a line in the stage log, never a failure
of the stage (short timeout, every error caught).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from orchestrator import dag
from orchestrator import secrets as secretlib
from orchestrator.errors import PipelineError
from orchestrator.spec import Notify, NotifyEvent, SecretRef
from orchestrator.state import RunPaths, now_iso

TIMEOUT_S = 5.0
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def spec_section(paths: RunPaths, key: str) -> Any:
    """A top-level section of the run's spec copy (validated at submit), or None when absent or unreadable."""
    try:
        # libyaml's loader where PyYAML has it (same safe constructors): every job reads this 2-3 times, and the
        # pure-Python one took 19 ms a read for a 64-variant sweep's spec.
        raw = yaml.load(paths.spec_copy.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except (OSError, yaml.YAMLError):
        return None
    return raw.get(key) if isinstance(raw, dict) else None


def settings(paths: RunPaths) -> tuple[Notify, SecretRef] | None:
    """The run's `notify:` and the secret holding the URL."""
    section = spec_section(paths, "notify")
    if not section:
        return None
    try:
        plan = paths.plan_json()
        config = Notify.model_validate(section)
        return config, SecretRef.model_validate(plan["secrets"][config.webhook])
    except (OSError, ValueError, KeyError):
        return None


def wants(paths: RunPaths, event: NotifyEvent) -> bool:
    """Whether the run asked to be told of `event` (and its webhook secret is declared)."""
    found = settings(paths)
    return found is not None and event in found[0].events


def send(paths: RunPaths, event: NotifyEvent, text: str, log: Path) -> None:
    """Post one message if the run asked for this event; any failure is noted in the stage log only."""
    found = settings(paths)
    if found is None or event not in found[0].events:
        return
    config, ref = found
    try:
        url = secretlib.resolve(config.webhook, ref, os.environ)
    except PipelineError as exc:
        _note(log, f"notification {event} not sent: {exc.message}")
        return
    error = post(url, text)
    if error:
        _note(log, f"notification {event} not sent: {error.replace(url, '***')}")


def post(url: str, text: str, timeout: float = TIMEOUT_S) -> str | None:
    """POST {"text": text}; None when the webhook answered 2xx, else what went wrong (never raises)."""
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
        return None
    except Exception as exc:  # noqa: BLE001 (never fail the stage) urllib raises URLError, HTTPError, socket timeouts, ValueError for a bad URL
        return f"{type(exc).__name__}: {exc}"


def _note(log: Path, message: str) -> None:
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"=== pipeline: {message}\n")


def stage_started(paths: RunPaths, stage: str, job_id: str, restarts: int, host: str, log: Path) -> None:
    if restarts:
        send(paths, "stage_requeued", f"{_run_id(paths)}: stage {stage} (job {job_id}) requeued, restart "
                                      f"{restarts} now running on {host}", log)


def stage_ended(paths: RunPaths, stage: str, job_id: str, rc: int, reason: str | None, requeued: bool,
                log: Path) -> None:
    run_id = _run_id(paths)
    if rc and not requeued:
        send(paths, "stage_failed", f"{run_id}: stage {stage} (job {job_id}) failed: {reason or f'exit {rc}'}; "
                                    f"see: pipeline logs {run_id} {stage}", log)
    if not wants(paths, "run_ended"):
        return  # run_outcome reads every stage's record: 0.3 s CPU per task of a 385-task sweep, for nobody
    ended = run_outcome(paths)
    if ended is not None and _first_to_tell(paths):
        verdict = "completed" if ended else "ended with failures"
        send(paths, "run_ended", f"{run_id}: run {verdict} at {now_iso()}; see: pipeline report {run_id}", log)


def run_outcome(paths: RunPaths) -> bool | None:
    """None while some stage may still run; else whether every stage completed. A stage downstream of a failed
    one counts as ended: the scheduler cancels it (afterok + kill-on-invalid-dep; the local driver likewise)."""
    try:
        state = json.loads(paths.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stages: dict[str, Any] = state["stages"]
    ended: dict[str, int | None] = {}
    for name, st in stages.items():
        if not st["attempts"]:
            return None
        record = _last_record(paths, name, st["attempts"][-1]["job_id"])
        ended[name] = record.get("exit_code") if record and record.get("end") else None
    failed = {n for n, code in ended.items() if code not in (None, 0)}
    doomed = dag.downstream({n: st["after"] for n, st in stages.items()}, failed)  # the failed ones included
    if any(code is None and name not in doomed for name, code in ended.items()):
        return None
    return not failed


def _last_record(paths: RunPaths, stage: str, job_id: str) -> dict[str, Any] | None:
    records = paths.job_records(stage, job_id)
    try:
        return json.loads(records[-1].read_text(encoding="utf-8")) if records else None
    except (OSError, ValueError):
        return None


def _first_to_tell(paths: RunPaths) -> bool:
    """Two branches ending together both see the run ended: an O_EXCL marker per set of attempts lets one tell."""
    state = json.loads(paths.state.read_text(encoding="utf-8"))
    jobs = " ".join(st["attempts"][-1]["job_id"] for st in state["stages"].values())
    marker = paths.run_ended(hashlib.sha256(jobs.encode()).hexdigest()[:16])
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return True
    except FileExistsError:
        return False


def _run_id(paths: RunPaths) -> str:
    return paths.root.name
