"""The job-side wrapper: runs inside the Slurm job (through submitit) or under the local driver.

It records its own start, end, exit code, host and restart count in the run directory (records/<stage>/),
so status stays truthful when accounting is off or purged, resolves secrets at run time, streams the
script's output live to the stage log with secret values redacted, and checks declared outputs.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator import STAGES_PATH, manifest, notify, tracking
from orchestrator import secrets as secretlib
from orchestrator.errors import PipelineError
from orchestrator.spec import SecretRef
from orchestrator.state import RunPaths, atomic_write, now_iso

OUTPUT_MISSING_RC = 86  # distinct, so the log and status say "outputs missing", not a program crash
SECRET_FAILED_RC = 87
GRACE_S = 60  # time the program gets to checkpoint before the requeue
REQUEUING = threading.Event()  # this wrapper asked Slurm to requeue its job: the exit that follows is no failure


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, sort_keys=True))


@dataclass(frozen=True)
class JobEnv:
    """The running job as its scheduler describes it (submitit's JobEnvironment): which restart this is, where
    it runs and, where the scheduler has them, its time left (seconds; None: unknown) and a requeue of itself.
    The Slurm backend builds one (scheduler/slurm_job.py); local jobs have no restarts or time limits."""

    restarts: int = 0
    node: str | None = None
    nodes: str | None = None
    time_left: Callable[[str], int | None] | None = None
    requeue: Callable[[str], None] | None = None


def execute(run_dir: Path, stage: str, job_id: str, job: JobEnv = JobEnv()) -> int:
    paths = RunPaths(run_dir)
    plan = paths.plan_json()
    spec = next(s for s in plan["stages"] if s["name"] == stage)
    restarts = job.restarts
    rec_path = paths.job_record(stage, job_id, restarts)
    record: dict[str, Any] = {"job_id": job_id, "stage": stage, "restarts": restarts, "host": socket.gethostname(),
                              "node": job.node, "nodes": job.nodes,
                              "start": now_iso(), "pid": os.getpid()}
    write_record(rec_path, record)
    log_path = paths.log(stage, job_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    notify.stage_started(paths, stage, job_id, restarts, record["host"], log_path)
    with open(log_path, "ab", buffering=0) as log:
        log.write(f"=== pipeline: stage {stage} job {job_id} restart {restarts} on {record['host']} "
                  f"at {record['start']}\n".encode())
        unshared = manifest.break_shared_links(paths.workdir(plan["workdir"]), spec.get("output_roots") or [])
        if unshared:
            log.write(f"=== pipeline: {unshared} output file(s) shared with a later run copied first\n".encode())
        rc, reason = _run_script(paths, plan, stage, job_id, log, job)
        if rc == 0:
            missing = _missing_outputs(plan, paths, spec["outputs"])
            if missing:
                rc, reason = OUTPUT_MISSING_RC, f"declared outputs missing: {', '.join(missing)}"
            else:  # what later runs with the same stage key may reuse (orchestrator/manifest.py)
                log.write(f"=== pipeline: {manifest.record_completion(paths, plan, spec, job_id)}\n".encode())
        log.write(f"=== pipeline: exit {rc}{' (' + reason + ')' if reason else ''} at {now_iso()}\n".encode())
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the script and what it waited for; for the report
    record.update(end=now_iso(), exit_code=rc, reason=reason, cpu_s=round(used.ru_utime + used.ru_stime, 2),
                  max_rss_kib=used.ru_maxrss)
    write_record(rec_path, record)
    notify.stage_ended(paths, stage, job_id, rc, reason, REQUEUING.is_set(), log_path)
    return rc


def _run_script(paths: RunPaths, plan: dict[str, Any], stage: str, job_id: str, log: Any,
                job: JobEnv) -> tuple[int, str | None]:
    env = dict(os.environ)
    try:
        refs = {k: SecretRef.model_validate(v) for k, v in plan["secrets"].items()}
        values = secretlib.resolve_all(refs, env)
    except PipelineError as exc:
        log.write(f"=== pipeline: {exc}\n".encode())
        return SECRET_FAILED_RC, f"secret not available: {exc.message}"
    env.update(values)
    env.update(PIPELINE_RUN_DIR=str(paths.root), PIPELINE_STAGE=stage, PIPELINE_JOB_ID=job_id,
               PIPELINE_STAGES_PATH=STAGES_PATH, PIPELINE_PROGRESS_FILE=str(paths.progress(stage)),
               PIPELINE_METRICS_FILE=str(paths.metrics(stage, job_id)),
               PYTHONUNBUFFERED="1")
    env.update(tracking.job_env(paths))
    # Without `venv:`, `python`/`torchrun` in a stage are those of pipeline's own environment; a stage's
    # `source <venv>/bin/activate` still puts its own env first.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    forwarder = SignalForwarder()  # installed before the child exists: a cancel can never orphan it
    child = subprocess.Popen(["bash", str(paths.script(stage))], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=env, cwd=str(paths.root), start_new_session=True)
    forwarder.attach(child)
    spec = next(s for s in plan["stages"] if s["name"] == stage)
    timer = requeue_before_timeout(child, job_id, spec["retries"], log, job)
    redact = [v.encode() for v in values.values() if v]
    assert child.stdout is not None
    for line in iter(child.stdout.readline, b""):
        for secret in redact:
            line = line.replace(secret, b"***")
        log.write(line)
    rc = child.wait()
    if timer is not None:
        timer.cancel()
    if rc < 0:
        return 128 - rc, f"killed by signal {-rc}"
    return rc, None if rc == 0 else f"script exited {rc}"


def requeue_before_timeout(child: subprocess.Popen[bytes], job_id: str, retries: int, log: Any,
                           job: JobEnv) -> threading.Timer | None:
    """With `retries`, a job about to hit its time limit asks the program to checkpoint (SIGUSR2), then requeues
    itself: same job id, so afterok dependents keep waiting (sbatch(1) --requeue). Slurm's own --signal reaches
    only job steps, not this batch-step process, so the wrapper keeps its own clock."""
    restarts, requeue = job.restarts, job.requeue
    if not retries or restarts >= retries or job.time_left is None or requeue is None:
        return None
    seconds = job.time_left(job_id)
    if seconds is None:
        return None

    def fire() -> None:
        log.write(f"=== pipeline: time limit in {GRACE_S} s: SIGUSR2 to the stage, then requeue "
                  f"(restart {restarts + 1} of {retries})\n".encode())
        REQUEUING.set()
        try:
            os.killpg(child.pid, signal.SIGUSR2)
            child.wait(timeout=GRACE_S * 0.75)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        requeue(job_id)

    timer = threading.Timer(max(1.0, seconds - GRACE_S), fire)
    timer.daemon = True
    timer.start()
    return timer


class SignalForwarder:
    """Pass SIGTERM/SIGUSR2/SIGINT to the script's whole process group so training can checkpoint and exit.
    A signal that arrives before the script has started is remembered and delivered as soon as it has."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:
            self.pending.append(signum)
            return
        try:
            os.killpg(self.child.pid, signum)
        except ProcessLookupError:
            pass

    def attach(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        for signum in self.pending:
            self._handle(signum, None)


def _missing_outputs(plan: dict[str, Any], paths: RunPaths, outputs: list[str]) -> list[str]:
    workdir = paths.workdir(plan["workdir"])
    return [out for out in outputs if not (workdir / out).exists()]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m orchestrator.jobside RUN_DIR STAGE JOB_ID", file=sys.stderr)
        return 2
    return execute(Path(args[0]), args[1], args[2])


if __name__ == "__main__":
    sys.exit(main())
