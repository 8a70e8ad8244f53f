"""SageMaker HyperPod: describe a cluster and reach its head node through SSM (boto3).

`controller_target` finds the Running node of the controller instance group with `sagemaker:DescribeCluster` and
`sagemaker:ListClusterNodes`, and returns a `remote.Target` whose ProxyCommand is

    aws ssm start-session --target sagemaker-cluster:<cluster-id>_<group>-<instance-id>
        --document-name AWS-StartSSHSession --parameters portNumber=%p [--region R]

(the SSM target format HyperPod documents; <cluster-id> is the last path segment of the ClusterArn). This needs
the AWS CLI v2 and the Session Manager plugin on this machine, ssm:StartSession on that target, and an
authorized key for the remote user on the head node. AWS errors become one clear line each.
"""

from __future__ import annotations

import datetime as dt
import shlex
from typing import Any

from orchestrator.errors import PipelineError
from orchestrator.remote.target import Target
from orchestrator.spec import HyperPodTarget, Remote

SSM_DOCUMENT = "AWS-StartSSHSession"
_PERMISSIONS = "sagemaker:DescribeCluster and sagemaker:ListClusterNodes (plus ssm:StartSession for the head node)"


class HyperPodError(PipelineError):
    """The SageMaker API refused or failed a request, or the cluster has no usable head node."""


def _client(client: Any, region: str | None) -> Any:
    if client is not None:
        return client
    try:
        import boto3
        from botocore.exceptions import BotoCoreError
    except ImportError:
        raise HyperPodError("HyperPod clusters need boto3, which is not installed here",
                            "pip install 'pipeline[remote]'") from None

    try:
        # A fresh session: credentials are read now (boto3's default session caches them for the process).
        return boto3.session.Session().client("sagemaker", region_name=region)
    except BotoCoreError as exc:  # NoRegionError, ProfileNotFound, ...
        raise _botocore_error(exc, region) from None


def _region(client: Any, region: str | None) -> str:
    return region or str(getattr(getattr(client, "meta", None), "region_name", None) or "the default region")


def _call(client: Any, operation: str, cluster: str, region: str | None, **kwargs: Any) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response: dict[str, Any] = getattr(client, operation)(**kwargs)
        return response
    except ClientError as exc:
        raise _client_error(exc, operation, cluster, _region(client, region)) from None
    except BotoCoreError as exc:
        raise _botocore_error(exc, _region(client, region)) from None


def _pages(client: Any, cluster: str, region: str | None) -> list[dict[str, Any]]:
    from botocore.exceptions import BotoCoreError, ClientError

    nodes: list[dict[str, Any]] = []
    try:
        for page in client.get_paginator("list_cluster_nodes").paginate(ClusterName=cluster):
            nodes.extend(page.get("ClusterNodeSummaries", []))
    except ClientError as exc:
        raise _client_error(exc, "list_cluster_nodes", cluster, _region(client, region)) from None
    except BotoCoreError as exc:
        raise _botocore_error(exc, _region(client, region)) from None
    return nodes


def _client_error(exc: Any, operation: str, cluster: str, region: str) -> HyperPodError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = " ".join(str(error.get("Message", "")).split())[:200]
    if code in ("ResourceNotFound", "ResourceNotFoundException") or (
            code == "ValidationException" and "not found" in message.lower()):
        return HyperPodError(f"HyperPod cluster {cluster!r} not found in {region}",
                             f"check hyperpod.cluster and hyperpod.region: aws sagemaker list-clusters --region {region}"
                             if region != "the default region" else
                             "check hyperpod.cluster and hyperpod.region: aws sagemaker list-clusters")
    if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"):
        return HyperPodError("AWS credentials have expired",
                             "refresh them (aws sso login, or new temporary credentials) and retry")
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess"):
        return HyperPodError(f"access denied: sagemaker {operation} on cluster {cluster!r}",
                             f"the IAM identity needs {_PERMISSIONS}")
    if code in ("UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
                "SignatureDoesNotMatch", "IncompleteSignature"):
        return HyperPodError("AWS did not recognise these credentials",
                             "check AWS_PROFILE / `aws configure list` (wrong or deleted access key?)")
    if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
        return HyperPodError(f"the SageMaker API is throttling requests ({operation})", "retry in a minute")
    return HyperPodError(f"sagemaker {operation} on {cluster!r} failed: {code or 'error'}: {message}")


def _botocore_error(exc: Exception, region: str | None) -> HyperPodError:
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return HyperPodError("no AWS credentials found", "run `aws configure` or `aws sso login`, or set AWS_PROFILE")
    if name == "NoRegionError":
        return HyperPodError("no AWS region given", "set hyperpod.region in the cluster profile, or AWS_REGION")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
        return HyperPodError(f"cannot reach the SageMaker API in {region or 'the default region'}: {exc}",
                             "check the network/proxy and the region")
    if name in ("TokenRetrievalError", "SSOTokenLoadError", "UnauthorizedSSOTokenError"):
        return HyperPodError("AWS SSO credentials have expired", "run `aws sso login` and retry")
    return HyperPodError(f"AWS request failed: {name}: {' '.join(str(exc).split())[:200]}")


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return None if value is None else str(value)


def describe(cluster: str, region: str | None, client: Any = None) -> dict[str, Any]:
    """Cluster, instance groups (name, type, count, status) and nodes (id, group, status, launch time)."""
    client = _client(client, region)
    info = _call(client, "describe_cluster", cluster, region, ClusterName=cluster)
    arn = str(info.get("ClusterArn", ""))
    groups = [{"name": g.get("InstanceGroupName", ""), "type": g.get("InstanceType", ""),
               "count": g.get("CurrentCount", 0), "target": g.get("TargetCount", g.get("CurrentCount", 0)),
               "status": g.get("Status", "")} for g in info.get("InstanceGroups", [])]
    nodes = [{"id": n.get("InstanceId", ""), "group": n.get("InstanceGroupName", ""), "type": n.get("InstanceType", ""),
              "status": (n.get("InstanceStatus") or {}).get("Status", ""),
              "message": (n.get("InstanceStatus") or {}).get("Message"),
              "launch_time": _iso(n.get("LaunchTime"))} for n in _pages(client, cluster, region)]
    return {"name": info.get("ClusterName", cluster), "arn": arn, "id": arn.rsplit("/", 1)[-1],
            "status": info.get("ClusterStatus", ""), "failure": info.get("FailureMessage"),
            "region": region or getattr(getattr(client, "meta", None), "region_name", None),
            "created": _iso(info.get("CreationTime")), "instance_groups": groups, "nodes": nodes}


def ssm_target(cluster_id: str, group: str, instance_id: str) -> str:
    return f"sagemaker-cluster:{cluster_id}_{group}-{instance_id}"


def proxy_command(target: str, region: str | None) -> str:
    words = ["aws", "ssm", "start-session", "--target", target, "--document-name", SSM_DOCUMENT,
             "--parameters", "portNumber=%p"]
    if region:
        words += ["--region", region]
    return shlex.join(words)


def controller_target(hp: HyperPodTarget, client: Any = None, remote: Remote | None = None) -> Target:
    """The head node (a Running node of hp.controller_group) as an SSH-over-SSM Target.

    Target.host is the instance id (ssh config `Host i-*` blocks and known_hosts apply to it); user, port,
    identity file, pipeline and upload_dir come from `remote` when given.
    """
    info = describe(hp.cluster, hp.region, client)
    group = hp.controller_group
    known = [g["name"] for g in info["instance_groups"]]
    members = [n for n in info["nodes"] if n["group"] == group]
    if group not in known and not members:
        raise HyperPodError(f"HyperPod cluster {hp.cluster!r} has no instance group {group!r}",
                            f"set hyperpod.controller_group to one of: {', '.join(known) or '(none)'}")
    running = [n for n in members if n["status"] == "Running"]
    if not running:
        states = ", ".join(f"{n['id']} {n['status']}" for n in members) or "no nodes"
        raise HyperPodError(f"HyperPod cluster {hp.cluster!r} ({info['status']}) has no InService controller node "
                            f"in {group!r} ({states})",
                            f"wait until the cluster is InService: pipeline clusters describe, or "
                            f"aws sagemaker list-cluster-nodes --cluster-name {hp.cluster}")
    node = min(running, key=lambda n: str(n["launch_time"] or ""))  # the oldest: the original head node
    target = ssm_target(info["id"], group, node["id"])
    base = remote or Remote(hyperpod=hp)
    return Target(host=node["id"], user=base.user, port=base.port, identity_file=base.identity_file,
                  proxy_command=proxy_command(target, hp.region), pipeline=base.pipeline, upload_dir=base.upload_dir)


def format_describe(info: dict[str, Any]) -> str:
    """Text for `pipeline clusters describe NAME`."""
    lines = [f"cluster {info['name']}  id {info['id']}  status {info['status']}  region {info.get('region') or '-'}"]
    if info.get("failure"):
        lines.append(f"  failure: {info['failure']}")
    lines.append(f"  {'GROUP':<24} {'TYPE':<20} {'COUNT':>7}  STATUS")
    for group in info["instance_groups"]:
        count = f"{group['count']}/{group['target']}"
        lines.append(f"  {group['name']:<24} {group['type']:<20} {count:>7}  {group['status']}")
    lines.append(f"  {'NODE':<24} {'GROUP':<24} {'STATUS':<14} LAUNCHED")
    for node in info["nodes"]:
        lines.append(f"  {node['id']:<24} {node['group']:<24} {node['status']:<14} {node['launch_time'] or ''}")
    if not info["nodes"]:
        lines.append("  (no nodes)")
    return "\n".join(lines)
