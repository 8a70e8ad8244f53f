"""The run directory's state file. Nothing else in the code base writes state; the paths are layout.RunPaths's.

Writes are atomic (temp file + fsync + os.replace) under an flock, so concurrent `pipeline` processes
(status on one node, rerun on another) never corrupt the file or lose each other's updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import StateError
from orchestrator.layout import RunPaths as RunPaths  # re-exported: callers import it from here too
from orchestrator.states import JobState

if TYPE_CHECKING:
    from orchestrator.plan import Plan

SCHEMA_VERSION = 1
LOCK_TIMEOUT_S = 60.0
RUN_LOCK_TIMEOUT_S = 120.0  # a rerun submits a few jobs in seconds; a wait this long means something is stuck
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CacheSource(BaseModel):
    """Where a CACHED stage's outputs came from: a COMPLETED stage of an earlier run with the same key."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    run_dir: str
    stage: str
    job_id: str
    key: str
    linked: str = "hardlink"  # how the outputs reached this run's workdir: hardlink, symlink or same (one workdir)


class Attempt(BaseModel):
    """One submission of a stage. Fields other than job_id are refreshed from the scheduler and job records."""

    model_config = ConfigDict(extra="forbid")
    job_id: str
    state: JobState = JobState.PENDING
    submitted: str = Field(default_factory=now_iso)
    start: str | None = None
    end: str | None = None
    exit_code: int | None = None
    nodes: str | None = None
    reason: str | None = None
    restarts: int = 0
    history: list[str] = Field(default_factory=list)  # why and when each restart happened (requeues), oldest first
    cached_from: CacheSource | None = None  # set on a CACHED attempt (no job of its own)
    spec_version: int | None = None  # which spec.<n>.yaml of the run this attempt ran with (None: 1, spec.yaml)


class StageState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: list[str]
    attempts: list[Attempt] = Field(default_factory=list)

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def state(self) -> JobState:
        return self.current.state if self.current else JobState.NOT_SUBMITTED


class RunState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    run_id: str
    pipeline: str
    scheduler: str
    cluster: str
    created: str = Field(default_factory=now_iso)
    spec_sha256: str
    workdir: str | None = None
    stages: dict[str, StageState]
    spec_version: int = 1  # the newest spec of the run: spec.yaml is 1, `rerun --spec` adds spec.<n>.yaml
    spec_source: str | None = None  # the file the newest spec was loaded from (`rerun --set` re-plans from it)
    spec_overrides: list[str] = Field(default_factory=list)  # ... and the --set overrides it was loaded with


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(lock_path: Path, timeout: float = LOCK_TIMEOUT_S,
           what: str = "another pipeline command is updating this run") -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateError(f"{lock_path} stayed locked for {timeout:.0f} s",
                                     f"{what}; retry shortly") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


class Store:
    """Reads and updates one run's state.json."""

    def __init__(self, run_dir: Path) -> None:
        self.paths = RunPaths(run_dir)

    def read(self) -> RunState:
        try:
            raw = self.paths.state.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StateError(f"{self.paths.root} has no state.json",
                             "is this a run directory? `pipeline list` shows known runs") from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StateError(f"{self.paths.state} is not valid JSON ({exc})") from None
        if data.get("schema_version") != SCHEMA_VERSION:
            raise StateError(f"{self.paths.state} has schema version {data.get('schema_version')!r}; "
                             f"this pipeline reads version {SCHEMA_VERSION}", "use the pipeline version that made it")
        try:
            return RunState.model_validate(data)
        except ValidationError as exc:
            raise StateError(f"{self.paths.state} is malformed: {exc.errors()[0]['msg']}") from None

    def read_plan(self) -> Plan:
        """The plan as submitted (plan.json + scripts/). plan comes late: the job wrapper never needs jinja2."""
        from orchestrator import plan

        return plan.load_saved(self.paths.plan_json(), self.paths.scripts)

    def write(self, state: RunState) -> None:
        atomic_write(self.paths.state, state.model_dump_json(indent=2))

    def create(self, state: RunState) -> None:
        with locked(self.paths.lock):
            if self.paths.state.exists():
                raise StateError(f"{self.paths.state} already exists")
            self.write(state)

    @contextlib.contextmanager
    def changing(self, timeout: float = RUN_LOCK_TIMEOUT_S) -> Iterator[None]:
        """The run lock: one command at a time changes which jobs a run has. Without it two `rerun --stage S`
        started together both see S failed and both submit it (issue 13 item 3). It is a separate file from
        the state lock, which update() takes (briefly) inside it, and status never takes it."""
        with locked(self.paths.run_lock, timeout, what="another pipeline command (submit, rerun or cancel) is "
                                                          "changing this run"):
            yield

    @contextlib.contextmanager
    def update(self) -> Iterator[RunState]:
        """Read-modify-write under the lock; the change is written only if the block finishes."""
        with locked(self.paths.lock):
            state = self.read()
            yield state
            self.write(state)


FAULT_ENV = "PIPELINE_TEST_FAULT"


def faultpoint(point: str, stage: str = "") -> None:
    """Test-only: with PIPELINE_TEST_FAULT=<point>[:<stage>][:kill|pause], stop this process at that instant, so
    a drill can land a kill exactly where a crash would hurt (issue 13 items 1-2) instead of hoping a timer does.
    kill is SIGKILL (nothing runs after it, as with `kill -9`); pause waits for the test to deliver one."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    parts = wanted.split(":")
    action = parts.pop() if parts[-1] in ("kill", "pause") else "kill"
    if parts[0] != point or (len(parts) > 1 and parts[1] != stage):
        return
    if action == "pause":
        marker = os.environ.get(FAULT_ENV + "_MARKER")
        if marker:
            Path(marker).write_text(f"{os.getpid()}\n", encoding="utf-8")
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)


STAGING_SUFFIX = ".creating"
STAGING_MAX_AGE_S = 86400.0


def staging_dir(root: Path, run_id: str) -> Path:
    """Where a new run directory is assembled before it is renamed into place (and becomes visible)."""
    return root / f".{run_id}.{_short_host()}.{os.getpid()}{STAGING_SUFFIX}"


def _short_host() -> str:
    return socket.gethostname().split(".")[0] or "host"  # no dots: the staging name is split on them


def sweep_abandoned(root: Path) -> list[Path]:
    """Remove run directories a killed submit left half-built: nothing was submitted from them (sbatch runs only
    after the rename), so removing them loses nothing. Only those of a dead process on this host, or a day old."""
    removed = []
    for entry in root.glob(f".*{STAGING_SUFFIX}") if root.is_dir() else []:
        _, host, pid = entry.name[: -len(STAGING_SUFFIX)].rsplit(".", 2)
        try:
            age = time.time() - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        mine_and_dead = host == _short_host() and pid.isdigit() and not _pid_alive(int(pid))
        if mine_and_dead or age > STAGING_MAX_AGE_S:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_id(pipeline: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{pipeline}-{stamp}-{secrets.token_hex(2)}"


def pipeline_home() -> Path:
    return Path(os.environ.get("PIPELINE_HOME") or Path.home() / ".pipeline")


def index_dir() -> Path:
    return pipeline_home() / "index"


def register(run_id: str, run_dir: Path) -> None:
    """Remember where a run lives so `pipeline status RUN` finds it whatever run_root the cluster used."""
    index_dir().mkdir(parents=True, exist_ok=True)
    atomic_write(index_dir() / run_id, str(run_dir.resolve()) + "\n")


def find_run(ref: str | None) -> Path:
    """A run directory from a run id, a path, or None (the most recent run)."""
    if ref is None:
        runs = list_runs()
        if not runs:
            raise StateError("no runs yet", "submit one with `pipeline submit FILE.yaml`")
        return runs[-1]
    as_path = Path(ref)
    if RunPaths(as_path).state.is_file():
        return as_path
    if not RUN_ID_RE.match(ref):
        raise StateError(f"{ref!r} is neither a run directory nor a run id")
    entry = index_dir() / ref
    if entry.is_file():
        return Path(entry.read_text(encoding="utf-8").strip())
    raise StateError(f"unknown run {ref!r}", "`pipeline list` shows known runs")


def list_runs() -> list[Path]:
    """Known run directories, oldest first (by the time they were registered)."""
    if not index_dir().is_dir():
        return []
    entries = sorted(index_dir().iterdir(), key=lambda p: (p.stat().st_mtime, p.name))
    dirs = [Path(e.read_text(encoding="utf-8").strip()) for e in entries if RUN_ID_RE.match(e.name)]
    return [d for d in dirs if RunPaths(d).state.is_file()]


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True))
