"""Background daemons of the dev cluster, by pid file: start one in its own session, wait until it answers
(with the tails of its logs when it does not), stop it (SIGTERM, then SIGKILL), and read /proc for node drills."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator import proc
from orchestrator.errors import PipelineError

BOOT_TIMEOUT_S = 120.0


class DevClusterError(PipelineError):
    """The dev cluster could not be installed, booted or stopped; the message says what to do."""


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start a daemon in its own session (it outlives this process) and return its pid."""
    with open(log, "ab") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=env)
    return child.pid


def record(workdir: Path, name: str, pid: int) -> None:
    (workdir / "run" / f"{name}.pid").write_text(f"{pid}\n")


def wait_for(what: str, check: Callable[[], bool], workdir: Path, timeout: float = BOOT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise DevClusterError(f"{what} did not come up within {timeout:.0f} s\n{log_tails(workdir)}")


def log_tails(workdir: Path) -> str:
    parts = []
    for log in sorted((workdir / "log").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-8:]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(parts)


def client_env(conf: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(conf)}


def ok(argv: list[str], env: dict[str, str]) -> bool:
    try:
        return proc.run(argv, env=env, timeout=15, check=False).returncode == 0
    except PipelineError:  # not answering within the timeout (or not installed) is "not up yet"
        return False


def env_value(proc_dir: Path, key: bytes) -> str | None:
    try:
        for item in (proc_dir / "environ").read_bytes().split(b"\0"):
            if item.startswith(key + b"="):
                return item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        pass
    return None


def parent_pid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (ValueError, FileNotFoundError):
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if gone(pid):
                return
            time.sleep(0.1)


def gone(pid: int) -> bool:
    """True once pid has exited; reaps it when it is our child (a zombie still answers kill(pid, 0))."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def alive(pidfile: Path) -> bool:
    try:
        return not gone(int(pidfile.read_text().strip()))
    except (ValueError, FileNotFoundError):
        return False
