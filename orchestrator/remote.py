"""Run pipeline commands on a head node over SSH (fabric), as if they ran here.

`forward(target, argv, uploads)` opens ONE SSH connection (fabric, so ~/.ssh/config, keys and the agent are
honoured), checks that the head node's `pipeline --version` is ours, uploads the spec and the local files it
references into a fresh `<upload_dir>/<timestamp>-<random>/` (staged in a hidden `.…partial` folder and renamed
only when every file arrived, so nothing half-uploaded is ever used), rewrites the argv paths that name
uploaded files to their remote copies, runs the remote `pipeline` with that argv quoted by `shlex.join`, streams
its stdout/stderr here and returns its exit code.

The remote command always gets `PIPELINE_FORWARDED=1` in its environment (`FORWARDED_ENV`): the CLI must not
forward again when it sees it (the uploaded spec still names a cluster profile with `remote:`).

Host keys: fabric itself accepts any host key. Here the known_hosts file of the ssh config
(`UserKnownHostsFile`, default ~/.ssh/known_hosts) is read (never written): a key that differs from the
recorded one is refused; an unknown host is accepted unless the ssh config says `StrictHostKeyChecking yes`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import secrets
import shlex
import shutil
import socket
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import __version__, yamlsrc
from orchestrator.errors import PipelineError
from orchestrator.spec import Remote

FORWARDED_ENV = "PIPELINE_FORWARDED"
REMOTE_PIPELINE_ENV = "PIPELINE_REMOTE_PIPELINE"  # the head node's pipeline executable, like --remote-pipeline
_POINT_TO_IT = (f"--remote-pipeline PATH, {REMOTE_PIPELINE_ENV}=PATH, or remote.pipeline in the cluster profile")
_FOLLOW_FLAGS = frozenset({"-f", "--follow", "--watch", "--wait"})
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INSTALL_HINT = f"pip install 'pipeline[remote]=={__version__}'"


class RemoteError(PipelineError):
    """A forwarded command could not run on the head node. The subclasses are raised before anything ran there;
    RemoteError itself also when the connection dropped while the command ran."""


class UnreachableError(RemoteError):
    """DNS failure, connection refused, timeout, or a ProxyCommand that could not connect."""


class AuthError(RemoteError):
    """The head node refused our keys."""


class HostKeyError(RemoteError):
    """The head node's host key differs from known_hosts, or is unknown under StrictHostKeyChecking yes."""


class RemoteCommandError(RemoteError):
    """`pipeline` is missing on the head node, or is another version."""


class UploadError(RemoteError):
    """A local file is missing or an upload failed; nothing was run remotely."""


@dataclass(frozen=True)
class Target:
    """Where forwarded commands run.

    host: ssh host name or ~/.ssh/config alias. pipeline: the executable there (a bare name is looked up on the
    remote PATH; `~/...` and relative paths with a `/` are relative to the remote home). upload_dir: where
    submissions are uploaded (`~/...` or relative: the remote home). env: extra environment of the remote command
    (e.g. PIPELINE_HOME, SLURM_CONF), passed as `env KEY=VALUE ...`. ssh_config: read this ssh config file
    instead of ~/.ssh/config and /etc/ssh/ssh_config. proxy_command: an OpenSSH ProxyCommand (%h %p %r %%).
    """

    host: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    proxy_command: str | None = None
    pipeline: str = "pipeline"
    upload_dir: str = "~/.pipeline/uploads"
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    ssh_config: str | None = None
    connect_timeout: float = 15.0

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise RemoteError(f"invalid remote host {self.host!r}", "give a host name or ~/.ssh/config alias")
        for key in self.env:
            if not _ENV_NAME_RE.match(key):
                raise RemoteError(f"invalid environment variable name {key!r} for the remote command")

    @classmethod
    def from_remote(cls, remote: Remote, proxy_command: str | None = None) -> Target:
        """A cluster profile's `remote:` with `host:` (HyperPod profiles: use `resolve`)."""
        if remote.host is None:
            raise RemoteError("this remote names a HyperPod cluster, not a host",
                              "use orchestrator.remote.resolve(remote), which finds the head node through SageMaker")
        return cls(host=remote.host, user=remote.user, port=remote.port, identity_file=remote.identity_file,
                   proxy_command=proxy_command, pipeline=remote.pipeline, upload_dir=remote.upload_dir)

    @classmethod
    def parse(cls, text: str) -> Target:
        """`--host [user@]host[:port]` (an ssh config alias works too)."""
        user, _, hostport = text.rpartition("@")
        host, port = hostport, None
        if hostport.count(":") == 1:
            host, _, port_text = hostport.partition(":")
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise RemoteError(f"--host {text!r}: {port_text!r} is not a port number", "use [user@]host[:port]")
            port = int(port_text)
        return cls(host=host, user=user or None, port=port)

    @property
    def where(self) -> str:
        """user@host:port as far as known (for messages)."""
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"


def resolve(remote: Remote) -> Target:
    """The Target of a cluster profile's `remote:`: its host, or its HyperPod head node found via SageMaker."""
    if remote.hyperpod is not None:
        from orchestrator import hyperpod  # late: boto3 is only needed for HyperPod

        return hyperpod.controller_target(remote.hyperpod, remote=remote)
    return Target.from_remote(remote)


# ---------------------------------------------------------------------------------------------------- spec files


def referenced_files(spec_path: Path) -> list[Path]:
    """The spec itself, then the local files it references, for upload. Deliberately simple:

    - `settings.<key>` and `stages[].params.<key>` string values (and strings in lists) that are relative paths
      of existing FILES inside the spec's folder (e.g. the hf family's `settings.data`);
    - `cluster: NAME` -> `clusters/NAME.yaml` next to the spec or in `../clusters` (the first found, as
      `spec.load` searches them).
    Not uploaded: absolute paths (they name head-node paths), directories, paths leaving the spec's folder,
    `secrets:` files (secrets never leave this machine), files named only inside `run:` bodies. A file that is
    not valid YAML yields just the spec, so the remote `pipeline` reports the located error.
    """
    spec_path = Path(spec_path)
    found: list[Path] = [spec_path]
    try:
        data = yamlsrc.load(spec_path).data  # the same bomb/depth limits as validate: it runs before it
    except PipelineError:
        return found
    if not isinstance(data, dict):
        return found
    base = spec_path.resolve().parent
    candidates: list[Any] = []
    settings = data.get("settings")
    if isinstance(settings, dict):
        candidates.extend(settings.values())
    for stage in data.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("params"), dict):
            candidates.extend(stage["params"].values())
    seen = {spec_path.resolve()}
    for value in _strings(candidates):
        path = _inside(base, value)
        if path is not None and path not in seen:
            seen.add(path)
            found.append(path)
    cluster = data.get("cluster")
    if isinstance(cluster, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", cluster):
        for directory in (base / "clusters", base.parent / "clusters"):
            profile = directory / f"{cluster}.yaml"
            if profile.is_file():
                if profile.resolve() not in seen:
                    found.append(profile.resolve())
                break
    return found


def _strings(values: list[Any]) -> list[str]:
    out: list[str] = []
    for value in values:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


def _inside(base: Path, value: str) -> Path | None:
    if not value or "\n" in value or len(value) > 4096 or "://" in value or value.startswith(("/", "~")):
        return None
    try:
        path = (base / value).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


# ---------------------------------------------------------------------------------------------------- forwarding


def forward(target: Target, argv: list[str], uploads: list[Path] | None = None) -> int:
    """Run `pipeline ARGV` on the target's head node and return its exit code; its output streams here.

    uploads (the spec first) are copied to a fresh upload folder and argv paths naming them are rewritten; the
    remote command runs in the remote copy of the spec's folder. Raises a RemoteError, and nothing ran remotely,
    when the head node cannot be reached or authenticated, its pipeline is missing or another version, or an
    upload fails; also (then the command may have run) when the connection drops while it runs.
    """
    files = _check_uploads(uploads or [])
    _check_proxy_program(target)
    conn = _connect(target)
    from invoke.exceptions import ThreadException  # installed with fabric (checked by _connect)

    link_errors: tuple[type[BaseException], ...] = (*_ssh_errors(), ThreadException)
    try:
        home = _remote_home(conn, target)
        _check_version(conn, target, home)
        cwd: str | None = None
        if files:
            remote_paths = _upload(conn, target, home, files)
            argv = _rewrite(argv, remote_paths)
            cwd = posixpath.dirname(remote_paths[files[0]])
        command = remote_command(target, argv, home, cwd)
        try:
            result = conn.run(command, hide=False, warn=True, pty=_wants_pty(argv), in_stream=False,
                              out_stream=sys.stdout, err_stream=sys.stderr)
        except link_errors as exc:
            raise RemoteError(f"connection to {target.where} lost while `pipeline {' '.join(argv[:1])}` ran: "
                              f"{_reason(exc)}", "it may have finished there: check with `pipeline status`") from None
        code = result.exited
        return code if isinstance(code, int) and code >= 0 else 255
    finally:
        conn.close()


def _wants_pty(argv: list[str]) -> bool:
    """Following commands (logs -f, status --watch, submit/rerun --wait) get a remote terminal, so Ctrl-C
    (SIGINT) here interrupts them THERE: fabric sends ^C down the terminal. Without one, a local Ctrl-C waits
    until the remote command ends by itself, which is what other commands want (a submission is never cut in
    half). With a terminal the remote stderr arrives merged into stdout."""
    return bool(_FOLLOW_FLAGS.intersection(argv))


def remote_command(target: Target, argv: list[str], home: str, cwd: str | None = None) -> str:
    """The remote shell command line: `[cd DIR &&] env KEY=VALUE ... PIPELINE ARGV...`, every word quoted."""
    env = {FORWARDED_ENV: "1", **target.env}
    words = ["env", *(f"{key}={value}" for key, value in env.items()), _remote_exe(target.pipeline, home), *argv]
    command = shlex.join(words)
    return f"cd {shlex.quote(cwd)} && {command}" if cwd else command


def _remote_exe(pipeline: str, home: str) -> str:
    if pipeline.startswith("~") or ("/" in pipeline and not pipeline.startswith("/")):
        return _remote_abs(pipeline, home)
    return pipeline


def _remote_abs(path: str, home: str) -> str:
    if path == "~":
        return home
    if path.startswith("~/"):
        return posixpath.join(home, path[2:])
    if path.startswith("~"):
        raise RemoteError(f"{path}: only ~/ (the connecting user's home) is supported on the remote side")
    return posixpath.normpath(posixpath.join(home, path))


def _check_uploads(uploads: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in uploads:
        resolved = Path(path).resolve()
        if not resolved.is_file():
            raise UploadError(f"{path}: no such file, so nothing was uploaded or run",
                              "check the path (files are uploaded relative to the spec's folder)")
        if resolved not in files:
            files.append(resolved)
    return files


def _check_proxy_program(target: Target) -> None:
    if not target.proxy_command:
        return
    try:
        program = shlex.split(target.proxy_command)[0]
    except (ValueError, IndexError):
        raise RemoteError(f"invalid ProxyCommand {target.proxy_command!r}") from None
    if shutil.which(program) is None:
        hint = ("install the AWS CLI v2 and the Session Manager plugin (HyperPod is reached through SSM)"
                if program == "aws" else f"install {program} or fix PATH")
        raise UnreachableError(f"ProxyCommand program {program!r} was not found on PATH", hint)


# ---------------------------------------------------------------------------------------------------- connection


def _expand_proxy(command: str, host: str, port: int, user: str) -> str:
    tokens = {"%": "%", "h": host, "p": str(port), "r": user}
    return re.sub(r"%([%hpr])", lambda m: tokens[m.group(1)], command)


def _connect(target: Target) -> Any:
    try:
        import fabric
        import paramiko
    except ImportError:
        raise RemoteError("commands on a remote head node need fabric, which is not installed here",
                          "pip install 'pipeline[remote]'") from None

    config = fabric.Config(runtime_ssh_path=os.path.expanduser(target.ssh_config)) if target.ssh_config \
        else fabric.Config()
    connect_kwargs: dict[str, Any] = {}
    if target.identity_file:
        key = Path(target.identity_file).expanduser()
        if not key.is_file():
            raise AuthError(f"identity file {target.identity_file} does not exist", "fix remote.identity_file")
        connect_kwargs["key_filename"] = [str(key)]
    try:
        conn = fabric.Connection(target.host, user=target.user, port=target.port, config=config,
                                 connect_timeout=int(target.connect_timeout), connect_kwargs=connect_kwargs,
                                 gateway=False if target.proxy_command else None)
    except FileNotFoundError:
        raise RemoteError(f"ssh config {target.ssh_config} does not exist") from None
    except ValueError as exc:  # user/port given twice (user@host plus user=)
        raise RemoteError(f"remote host {target.host!r}: {exc}") from None
    host, port, user = conn.host, conn.port, conn.user
    where = f"{user}@{host}:{port}" if host == target.host else f"{user}@{target.host} ({host}:{port})"
    known_hosts = _known_hosts(conn.ssh_config)
    if known_hosts is not None and known_hosts.is_file():
        try:
            conn.client.load_system_host_keys(str(known_hosts))  # read only: never written back
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read {known_hosts}: {_reason(exc)}", "fix or remove the file") from None
    if str(conn.ssh_config.get("stricthostkeychecking", "")).lower() == "yes":
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    sock: Any = None
    if target.proxy_command:
        try:
            sock = paramiko.ProxyCommand(_expand_proxy(target.proxy_command, host, port, user))
        except (OSError, paramiko.SSHException) as exc:
            raise UnreachableError(f"ProxyCommand for {target.host} could not start: {_reason(exc)}") from None
        conn.connect_kwargs["sock"] = sock
    _quiet_paramiko()
    ssh_cmd = _ssh_command(target, user, host, port)
    try:
        conn.open()
    except paramiko.BadHostKeyException:
        name = host if port == 22 else f"[{host}]:{port}"
        _close(conn, sock)
        custom = f" -f {shlex.quote(str(known_hosts))}" if known_hosts != DEFAULT_KNOWN_HOSTS else ""
        raise HostKeyError(f"host key of {where} does not match {known_hosts} (the head node was rebuilt, "
                           "or someone is in between)",
                           f"if it was rebuilt: ssh-keygen -R '{name}'{custom}, then `{ssh_cmd}` once to check and "
                           "record the new key") from None
    except paramiko.AuthenticationException:
        _close(conn, sock)
        keys = target.identity_file or "your ssh keys/agent"
        raise AuthError(f"authentication to {where} failed with {keys}",
                        "check the user name, remote.identity_file (or IdentityFile in ~/.ssh/config) and that its "
                        "public key is in ~/.ssh/authorized_keys on the head node") from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        _close(conn, sock)
        refused = all(getattr(e, "errno", None) == errno.ECONNREFUSED for e in exc.errors.values())
        what = "connection refused" if refused else _reason(exc)
        raise UnreachableError(f"cannot connect to {where}: {what}",
                               "is sshd running there and the host/port right? try: ssh -v "
                               f"{'-p ' + str(port) + ' ' if port != 22 else ''}{user}@{host}") from None
    except socket.gaierror:
        _close(conn, sock)
        raise UnreachableError(f"cannot resolve host name {host!r}",
                               "check the spelling, your ~/.ssh/config Host aliases, VPN and DNS") from None
    except TimeoutError:  # socket.timeout is TimeoutError
        _close(conn, sock)
        raise UnreachableError(f"{where} did not answer within {target.connect_timeout:.0f} s",
                               "is the host up and reachable (VPN, security group, bastion)?") from None
    except paramiko.SSHException as exc:
        _close(conn, sock)
        text = _reason(exc)
        if "not found in known_hosts" in text:
            raise HostKeyError(f"host key of {where} is unknown and StrictHostKeyChecking is yes",
                               f"run `{ssh_cmd}` once, check the key's fingerprint and answer yes: ssh records it "
                               f"in {known_hosts}") from None
        if target.proxy_command:
            raise UnreachableError(f"ssh to {where} through its ProxyCommand failed: {text}",
                                   "run the ProxyCommand by hand to see why") from None
        if "banner" in text.lower():
            raise UnreachableError(f"{where} accepted the connection but sent no SSH banner (not an SSH server on "
                                   "that port, or sshd dropped us: MaxStartups, TCP wrappers, a firewall)",
                                   f"check the port; `{ssh_cmd.replace('ssh ', 'ssh -v ', 1)}` shows more") from None
        raise UnreachableError(f"ssh to {where} failed: {text}",
                               f"`{ssh_cmd.replace('ssh ', 'ssh -v ', 1)}` shows more") from None
    except OSError as exc:
        _close(conn, sock)
        raise UnreachableError(f"cannot connect to {where}: {_reason(exc)}",
                               "is the host up and reachable (VPN, security group, bastion)?") from None
    return conn


DEFAULT_KNOWN_HOSTS = Path.home() / ".ssh" / "known_hosts"


def _known_hosts(ssh_config: Any) -> Path | None:
    """The known_hosts file the ssh config names (it may not exist yet); None for /dev/null."""
    configured = ssh_config.get("userknownhostsfile")
    if isinstance(configured, list):
        configured = configured[0] if configured else None
    if configured:
        text = str(configured).split()[0]
        if text == "/dev/null":
            return None
        path = Path(os.path.expanduser(text))
    else:
        path = DEFAULT_KNOWN_HOSTS
    return path


def _ssh_command(target: Target, user: str, host: str, port: int) -> str:
    """The plain `ssh` command that reaches the same host with the same config (for hints)."""
    words = ["ssh"]
    if target.ssh_config:
        words += ["-F", target.ssh_config]
    if target.host != host:  # an alias: ssh resolves it the same way
        return shlex.join([*words, target.host])
    if port != 22:
        words += ["-p", str(port)]
    return shlex.join([*words, f"{user}@{host}"])


def _quiet_paramiko() -> None:
    """paramiko's transport thread logs a failed handshake with its traceback; with no logging handler set,
    Python's last-resort handler prints it to stderr before our one-line error. The error itself still reaches us
    as the exception conn.open() raises."""
    import logging

    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _close(conn: Any, sock: Any) -> None:
    try:
        conn.close()
    finally:
        if sock is not None:
            with contextlib.suppress(*_ssh_errors()):  # best effort while reporting the real error
                sock.close()


def _ssh_errors() -> tuple[type[BaseException], ...]:
    """What an SSH/SFTP operation raises when the link or the remote side fails."""
    import paramiko

    return (OSError, EOFError, paramiko.SSHException)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _remote_home(conn: Any, target: Target) -> str:
    try:
        home: str = conn.sftp().normalize(".")
    except _ssh_errors() as exc:  # e.g. paramiko.SSHException: no sftp subsystem
        raise RemoteError(f"SFTP to {target.where} failed: {_reason(exc)}",
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


# ---------------------------------------------------------------------------------------------------- uploads


def _upload(conn: Any, target: Target, home: str, files: list[Path]) -> dict[Path, str]:
    """Copy files (spec first) under a fresh folder, keeping their layout relative to their common folder."""
    sftp = conn.sftp()
    base = Path(os.path.commonpath([str(p.parent) for p in files]))
    root = _remote_abs(target.upload_dir, home)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    staging = posixpath.join(root, f".{name}.partial")
    final = posixpath.join(root, name)
    rels = {path: path.relative_to(base).as_posix() for path in files}
    try:
        _makedirs(sftp, root)
        sftp.mkdir(staging, 0o700)
        for path, rel in rels.items():
            destination = posixpath.join(staging, rel)
            _makedirs(sftp, posixpath.dirname(destination))
            sftp.put(str(path), destination, confirm=True)
            if sftp.stat(destination).st_size != path.stat().st_size:
                raise OSError(f"size mismatch after uploading {path}")
        sftp.rename(staging, final)
    except _ssh_errors() as exc:  # nothing may run after a failed upload
        _remove_tree(sftp, staging)
        raise UploadError(f"upload to {target.host}:{root} failed: {_reason(exc)}; nothing was run there",
                          "check remote.upload_dir (exists? writable? free space?) and the local files") from None
    return {path: posixpath.join(final, rel) for path, rel in rels.items()}


def _makedirs(sftp: Any, directory: str) -> None:
    parts = directory.split("/")
    for index in range(1, len(parts) + 1):
        current = "/".join(parts[:index])
        if not current:
            continue
        try:
            info = sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current, 0o700)
            continue
        if not stat.S_ISDIR(info.st_mode or 0):
            raise OSError(f"{current} exists and is not a directory")


def _remove_tree(sftp: Any, directory: str) -> None:
    with contextlib.suppress(*_ssh_errors()):  # best effort: a staging folder is hidden and never used
        for entry in sftp.listdir_attr(directory):
            path = posixpath.join(directory, entry.filename)
            if stat.S_ISDIR(entry.st_mode or 0):
                _remove_tree(sftp, path)
            else:
                sftp.remove(path)
        sftp.rmdir(directory)


def _rewrite(argv: list[str], remote_paths: dict[Path, str]) -> list[str]:
    """argv with every word (or --opt=VALUE) naming an uploaded local file replaced by its remote path."""

    def swap(word: str) -> str | None:
        if not word:
            return None
        try:
            path = Path(word).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        return remote_paths.get(path)

    out: list[str] = []
    for word in argv:
        replaced = swap(word)
        if replaced is None and word.startswith("--") and "=" in word:
            option, _, value = word.partition("=")
            value_path = swap(value)
            replaced = f"{option}={value_path}" if value_path else None
        out.append(replaced if replaced is not None else word)
    return out
