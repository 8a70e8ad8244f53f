"""What a forwarded command raises when it cannot run on the head node."""

from __future__ import annotations

from orchestrator.errors import PipelineError


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


def reason(exc: BaseException) -> str:
    """An exception as one short line, for messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
