"""Run pipeline commands on a head node over SSH (fabric), as if they ran here. By concern:

- target.py: where (`Target`: `--host [user@]host[:port]`, or a cluster profile's `remote:`); `resolve` below
  also finds a HyperPod head node (orchestrator/hyperpod.py, through SageMaker and SSM);
- connect.py: the SSH connection, its host-key checks, and one clear error a failure (a table);
- upload.py: the spec and its files into a fresh upload folder, argv rewritten to the remote copies;
- forwarding.py: `forward(target, argv, uploads)`, on one connection: version check, upload, run, stream.
What to upload is `orchestrator.loader.referenced_files(spec_path)` (it reads the spec as the loader does).
"""

from __future__ import annotations

from orchestrator.remote.errors import (
    AuthError,
    HostKeyError,
    RemoteCommandError,
    RemoteError,
    UnreachableError,
    UploadError,
)
from orchestrator.remote.forwarding import FORWARDED_ENV, REMOTE_PIPELINE_ENV, forward, remote_command
from orchestrator.remote.target import Target
from orchestrator.spec import Remote

__all__ = ["FORWARDED_ENV", "REMOTE_PIPELINE_ENV", "AuthError", "HostKeyError", "RemoteCommandError",
           "RemoteError", "Target", "UnreachableError", "UploadError", "forward", "remote_command", "resolve"]


def resolve(remote: Remote) -> Target:
    """The Target of a cluster profile's `remote:`: its host, or its HyperPod head node found via SageMaker."""
    if remote.hyperpod is not None:
        from orchestrator import hyperpod  # late: boto3 is only needed for HyperPod

        return hyperpod.controller_target(remote.hyperpod, remote=remote)
    return Target.from_remote(remote)
