"""The SSH connection (fabric, so ~/.ssh/config, keys and the agent are honoured) and its host keys.

Host keys: fabric itself accepts any host key. Here the known_hosts file of the ssh config
(`UserKnownHostsFile`, default ~/.ssh/known_hosts) is read (never written): a key that differs from the
recorded one is refused; an unknown host is accepted unless the ssh config says `StrictHostKeyChecking yes`.
A failure to connect becomes one RemoteError that says what to check, chosen from `_FAILURES`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.remote.errors import AuthError, HostKeyError, RemoteError, UnreachableError, reason
from orchestrator.remote.target import Target

DEFAULT_KNOWN_HOSTS = Path.home() / ".ssh" / "known_hosts"
_REACHABLE = "is the host up and reachable (VPN, security group, bastion)?"


@dataclass(frozen=True)
class Attempt:
    """One connection attempt, as the messages name it."""

    target: Target
    host: str
    port: int
    user: str
    known_hosts: Path | None

    @property
    def where(self) -> str:
        if self.host == self.target.host:
            return f"{self.user}@{self.host}:{self.port}"
        return f"{self.user}@{self.target.host} ({self.host}:{self.port})"

    @property
    def ssh_cmd(self) -> str:
        """The plain `ssh` command that reaches the same host with the same config (for hints)."""
        words = ["ssh"]
        if self.target.ssh_config:
            words += ["-F", self.target.ssh_config]
        if self.target.host != self.host:  # an alias: ssh resolves it the same way
            return shlex.join([*words, self.target.host])
        if self.port != 22:
            words += ["-p", str(self.port)]
        return shlex.join([*words, f"{self.user}@{self.host}"])

    @property
    def verbose(self) -> str:
        return self.ssh_cmd.replace("ssh ", "ssh -v ", 1)


def connect(target: Target) -> Any:
    """An open fabric Connection to the target, or a RemoteError saying why not."""
    try:
        import fabric
        import paramiko
    except ImportError:
        raise RemoteError("commands on a remote head node need fabric, which is not installed here",
                          "pip install 'pipeline[remote]'") from None
    conn = _connection(fabric, target)
    attempt = Attempt(target, conn.host, conn.port, conn.user, known_hosts(conn.ssh_config))
    _host_key_policy(paramiko, conn, attempt.known_hosts)
    sock = _proxy(paramiko, conn, attempt)
    _quiet_paramiko()
    try:
        conn.open()
    except (paramiko.SSHException, OSError) as exc:  # _FAILURES covers every subclass these raise
        close(conn, sock)
        raise explain(exc, attempt) from None
    return conn


def _connection(fabric: Any, target: Target) -> Any:
    config = fabric.Config(runtime_ssh_path=os.path.expanduser(target.ssh_config)) if target.ssh_config \
        else fabric.Config()
    connect_kwargs: dict[str, Any] = {}
    if target.identity_file:
        key = Path(target.identity_file).expanduser()
        if not key.is_file():
            raise AuthError(f"identity file {target.identity_file} does not exist", "fix remote.identity_file")
        connect_kwargs["key_filename"] = [str(key)]
    try:
        return fabric.Connection(target.host, user=target.user, port=target.port, config=config,
                                 connect_timeout=int(target.connect_timeout), connect_kwargs=connect_kwargs,
                                 gateway=False if target.proxy_command else None)
    except FileNotFoundError:
        raise RemoteError(f"ssh config {target.ssh_config} does not exist") from None
    except ValueError as exc:  # user/port given twice (user@host plus user=)
        raise RemoteError(f"remote host {target.host!r}: {exc}") from None


def _host_key_policy(paramiko: Any, conn: Any, known: Path | None) -> None:
    if known is not None and known.is_file():
        try:
            conn.client.load_system_host_keys(str(known))  # read only: never written back
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read {known}: {reason(exc)}", "fix or remove the file") from None
    if str(conn.ssh_config.get("stricthostkeychecking", "")).lower() == "yes":
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())


def _proxy(paramiko: Any, conn: Any, attempt: Attempt) -> Any:
    command = attempt.target.proxy_command
    if not command:
        return None
    try:
        sock = paramiko.ProxyCommand(expand_proxy(command, attempt.host, attempt.port, attempt.user))
    except (OSError, paramiko.SSHException) as exc:
        raise UnreachableError(f"ProxyCommand for {attempt.target.host} could not start: {reason(exc)}") from None
    conn.connect_kwargs["sock"] = sock
    return sock


# ------------------------------------------------------------------------------------- why a connection failed


def _bad_host_key(exc: BaseException, a: Attempt) -> RemoteError:
    name = a.host if a.port == 22 else f"[{a.host}]:{a.port}"
    custom = f" -f {shlex.quote(str(a.known_hosts))}" if a.known_hosts != DEFAULT_KNOWN_HOSTS else ""
    return HostKeyError(f"host key of {a.where} does not match {a.known_hosts} (the head node was rebuilt, "
                        "or someone is in between)",
                        f"if it was rebuilt: ssh-keygen -R '{name}'{custom}, then `{a.ssh_cmd}` once to check and "
                        "record the new key")


def _auth(exc: BaseException, a: Attempt) -> RemoteError:
    keys = a.target.identity_file or "your ssh keys/agent"
    return AuthError(f"authentication to {a.where} failed with {keys}",
                     "check the user name, remote.identity_file (or IdentityFile in ~/.ssh/config) and that its "
                     "public key is in ~/.ssh/authorized_keys on the head node")


def _no_connection(exc: BaseException, a: Attempt) -> RemoteError:
    errors = getattr(exc, "errors", {})
    refused = all(getattr(e, "errno", None) == errno.ECONNREFUSED for e in errors.values())
    what = "connection refused" if refused else reason(exc)
    return UnreachableError(f"cannot connect to {a.where}: {what}",
                            "is sshd running there and the host/port right? try: ssh -v "
                            f"{'-p ' + str(a.port) + ' ' if a.port != 22 else ''}{a.user}@{a.host}")


def _unresolved(exc: BaseException, a: Attempt) -> RemoteError:
    return UnreachableError(f"cannot resolve host name {a.host!r}",
                            "check the spelling, your ~/.ssh/config Host aliases, VPN and DNS")


def _timeout(exc: BaseException, a: Attempt) -> RemoteError:
    return UnreachableError(f"{a.where} did not answer within {a.target.connect_timeout:.0f} s", _REACHABLE)


def _ssh(exc: BaseException, a: Attempt) -> RemoteError:
    text = reason(exc)
    if "not found in known_hosts" in text:
        return HostKeyError(f"host key of {a.where} is unknown and StrictHostKeyChecking is yes",
                            f"run `{a.ssh_cmd}` once, check the key's fingerprint and answer yes: ssh records it "
                            f"in {a.known_hosts}")
    if a.target.proxy_command:
        return UnreachableError(f"ssh to {a.where} through its ProxyCommand failed: {text}",
                                "run the ProxyCommand by hand to see why")
    if "banner" in text.lower():
        return UnreachableError(f"{a.where} accepted the connection but sent no SSH banner (not an SSH server on "
                                "that port, or sshd dropped us: MaxStartups, TCP wrappers, a firewall)",
                                f"check the port; `{a.verbose}` shows more")
    return UnreachableError(f"ssh to {a.where} failed: {text}", f"`{a.verbose}` shows more")


def _os(exc: BaseException, a: Attempt) -> RemoteError:
    return UnreachableError(f"cannot connect to {a.where}: {reason(exc)}", _REACHABLE)


Explain = Callable[[BaseException, Attempt], RemoteError]


def _failures() -> list[tuple[type[BaseException], Explain]]:
    """Exception class -> message, the first match wins: subclasses before their bases (BadHostKeyException and
    AuthenticationException are SSHExceptions; NoValidConnectionsError, gaierror, TimeoutError are OSErrors)."""
    import paramiko

    return [
        (paramiko.BadHostKeyException, _bad_host_key),
        (paramiko.AuthenticationException, _auth),
        (paramiko.ssh_exception.NoValidConnectionsError, _no_connection),
        (socket.gaierror, _unresolved),
        (TimeoutError, _timeout),  # socket.timeout is TimeoutError
        (paramiko.SSHException, _ssh),
        (OSError, _os),
    ]


def explain(exc: BaseException, attempt: Attempt) -> RemoteError:
    for kind, message in _failures():
        if isinstance(exc, kind):
            return message(exc, attempt)
    return _os(exc, attempt)


# ---------------------------------------------------------------------------------------------------- helpers


def check_proxy_program(target: Target) -> None:
    """A ProxyCommand whose program is missing fails before any connection, with what to install."""
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


def expand_proxy(command: str, host: str, port: int, user: str) -> str:
    tokens = {"%": "%", "h": host, "p": str(port), "r": user}
    return re.sub(r"%([%hpr])", lambda m: tokens[m.group(1)], command)


def known_hosts(ssh_config: Any) -> Path | None:
    """The known_hosts file the ssh config names (it may not exist yet); None for /dev/null."""
    configured = ssh_config.get("userknownhostsfile")
    if isinstance(configured, list):
        configured = configured[0] if configured else None
    if configured:
        text = str(configured).split()[0]
        if text == "/dev/null":
            return None
        return Path(os.path.expanduser(text))
    return DEFAULT_KNOWN_HOSTS


def _quiet_paramiko() -> None:
    """paramiko's transport thread logs a failed handshake with its traceback; with no logging handler set,
    Python's last-resort handler prints it to stderr before our one-line error. The error itself still reaches us
    as the exception conn.open() raises."""
    import logging

    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def close(conn: Any, sock: Any = None) -> None:
    try:
        conn.close()
    finally:
        if sock is not None:
            with contextlib.suppress(*ssh_errors()):  # best effort while reporting the real error
                sock.close()


def ssh_errors() -> tuple[type[BaseException], ...]:
    """What an SSH/SFTP operation raises when the link or the remote side fails."""
    import paramiko

    return (OSError, EOFError, paramiko.SSHException)
