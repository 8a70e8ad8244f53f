"""`forward(target, argv, uploads)`: on ONE SSH connection, check that the head node's `pipeline --version` is
ours, upload the spec and its files, rewrite argv to the remote copies, run the remote `pipeline` with that argv
quoted by `shlex.join`, stream its stdout/stderr here and return its exit code.

The remote command always gets `PIPELINE_FORWARDED=1` in its environment (`FORWARDED_ENV`): the CLI must not
forward again when it sees it (the uploaded spec still names a cluster profile with `remote:`).
"""

from __future__ import annotations

import posixpath
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from orchestrator import __version__
from orchestrator.remote import connect as connection
from orchestrator.remote import upload as uploads_lib
from orchestrator.remote.errors import RemoteCommandError, RemoteError, reason
from orchestrator.remote.target import Target, remote_exe

FORWARDED_ENV = "PIPELINE_FORWARDED"
REMOTE_PIPELINE_ENV = "PIPELINE_REMOTE_PIPELINE"  # the head node's pipeline executable, like --remote-pipeline
_POINT_TO_IT = (f"--remote-pipeline PATH, {REMOTE_PIPELINE_ENV}=PATH, or remote.pipeline in the cluster profile")
_FOLLOW_FLAGS = frozenset({"-f", "--follow", "--watch", "--wait"})
_INSTALL_HINT = f"pip install 'pipeline[remote]=={__version__}'"


def forward(target: Target, argv: list[str], uploads: list[Path] | None = None) -> int:
    """Run `pipeline ARGV` on the target's head node and return its exit code; its output streams here.

    uploads (the spec first) are copied to a fresh upload folder and argv paths naming them are rewritten; the
    remote command runs in the remote copy of the spec's folder. Raises a RemoteError, and nothing ran remotely,
    when the head node cannot be reached or authenticated, its pipeline is missing or another version, or an
    upload fails; also (then the command may have run) when the connection drops while it runs.
    """
    files = uploads_lib.check_uploads(uploads or [])
    connection.check_proxy_program(target)
    conn = connection.connect(target)
    try:
        home = _remote_home(conn, target)
        _check_version(conn, target, home)
        cwd: str | None = None
        if files:
            remote_paths = uploads_lib.upload(conn, target, home, files)
            argv = uploads_lib.rewrite(argv, remote_paths)
            cwd = posixpath.dirname(remote_paths[files[0]])
        return _run(conn, target, argv, remote_command(target, argv, home, cwd))
    finally:
        conn.close()


def _run(conn: Any, target: Target, argv: list[str], command: str) -> int:
    from invoke.exceptions import ThreadException  # installed with fabric (checked by connect)

    link_errors: tuple[type[BaseException], ...] = (*connection.ssh_errors(), ThreadException)
    try:
        result = conn.run(command, hide=False, warn=True, pty=_wants_pty(argv), in_stream=False,
                          out_stream=sys.stdout, err_stream=sys.stderr)
    except link_errors as exc:
        raise RemoteError(f"connection to {target.where} lost while `pipeline {' '.join(argv[:1])}` ran: "
                          f"{reason(exc)}", "it may have finished there: check with `pipeline status`") from None
    code = result.exited
    return code if isinstance(code, int) and code >= 0 else 255


def _wants_pty(argv: list[str]) -> bool:
    """Following commands (logs -f, status --watch, submit/rerun --wait) get a remote terminal, so Ctrl-C
    (SIGINT) here interrupts them THERE: fabric sends ^C down the terminal. Without one, a local Ctrl-C waits
    until the remote command ends by itself, which is what other commands want (a submission is never cut in
    half). With a terminal the remote stderr arrives merged into stdout."""
    return bool(_FOLLOW_FLAGS.intersection(argv))


def remote_command(target: Target, argv: list[str], home: str, cwd: str | None = None) -> str:
    """The remote shell command line: `[cd DIR &&] env KEY=VALUE ... PIPELINE ARGV...`, every word quoted."""
    env = {FORWARDED_ENV: "1", **target.env}
    words = ["env", *(f"{key}={value}" for key, value in env.items()), remote_exe(target.pipeline, home), *argv]
    command = shlex.join(words)
    return f"cd {shlex.quote(cwd)} && {command}" if cwd else command


def _remote_home(conn: Any, target: Target) -> str:
    try:
        home: str = conn.sftp().normalize(".")
    except connection.ssh_errors() as exc:  # e.g. paramiko.SSHException: no sftp subsystem
        raise RemoteError(f"SFTP to {target.where} failed: {reason(exc)}",
                          "the head node's sshd needs the sftp subsystem (Subsystem sftp ... in sshd_config)") from None
    return home


def _check_version(conn: Any, target: Target, home: str) -> None:
    result = conn.run(remote_command(target, ["--version"], home), hide=True, warn=True, pty=False, in_stream=False)
    out = result.stdout.strip()
    err = " ".join(result.stderr.split())[:200]
    if result.exited in (126, 127):
        raise RemoteCommandError(f"pipeline not found on {target.host}: install it there ({_INSTALL_HINT}) or set "
                                 f"where it is (tried {target.pipeline!r}: {err or 'not found'})",
                                 f"give its path with {_POINT_TO_IT}, e.g. "
                                 "--remote-pipeline /fsx/ubuntu/pipeline/.venv/bin/pipeline")
    # The last such line: a chatty remote ~/.bashrc may print before it.
    matches = re.findall(r"^pipeline (\S+)$", out, re.MULTILINE)
    match = matches[-1] if matches else None
    if result.exited != 0 or match is None:
        shown = " ".join((out or err).split())[:200]
        raise RemoteCommandError(f"`{target.pipeline} --version` on {target.host} exited {result.exited} and printed "
                                 f"{shown!r}, not 'pipeline X.Y.Z'",
                                 f"point to the pipeline executable (its virtualenv's bin/pipeline) with "
                                 f"{_POINT_TO_IT}")
    if match != __version__:
        raise RemoteCommandError(f"pipeline on {target.host} is version {match}, this one is {__version__}",
                                 f"install the same version on both sides ({_INSTALL_HINT} on the head node, or "
                                 "upgrade this one)")
