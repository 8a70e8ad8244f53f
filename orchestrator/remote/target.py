"""Where forwarded commands run: `Target` (from `--host`, or a cluster profile's `remote:`) and the head node's
paths relative to the connecting user's home."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.remote.errors import RemoteError
from orchestrator.spec import Remote

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def remote_exe(pipeline: str, home: str) -> str:
    """The head node's pipeline executable: a bare name stays (the remote PATH finds it), others are made absolute."""
    if pipeline.startswith("~") or ("/" in pipeline and not pipeline.startswith("/")):
        return remote_abs(pipeline, home)
    return pipeline


def remote_abs(path: str, home: str) -> str:
    if path == "~":
        return home
    if path.startswith("~/"):
        return posixpath.join(home, path[2:])
    if path.startswith("~"):
        raise RemoteError(f"{path}: only ~/ (the connecting user's home) is supported on the remote side")
    return posixpath.normpath(posixpath.join(home, path))
