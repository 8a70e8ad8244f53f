"""HyperPod discovery with a STUBBED AWS API: botocore's Stubber on a real boto3 SageMaker client.

AWS control planes (SageMaker, SSM) cannot exist here, so these tests stub them; the Stubber still validates
every request and response against botocore's service model (DescribeCluster, ListClusterNodes), so the
shapes used are the real ones. The SSH-over-ProxyCommand path itself is tested against a real sshd in
test_forward.py::test_proxy_command_path.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Iterator
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 is in the `remote` extra: pip install -e '.[remote]'")
from botocore.stub import Stubber

from orchestrator import hyperpod
from orchestrator.hyperpod import HyperPodError
from orchestrator.spec import HyperPodTarget, Remote

ARN = "arn:aws:sagemaker:us-west-2:123456789012:cluster/abcdef123456"
LAUNCH = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.timezone.utc)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    real = boto3.client("sagemaker", region_name="us-west-2")
    with Stubber(real) as stubber:
        yield real, stubber
        stubber.assert_no_pending_responses()


def cluster_response(status: str = "InService") -> dict[str, Any]:
    return {
        "ClusterArn": ARN, "ClusterName": "ml-cluster", "ClusterStatus": status, "CreationTime": LAUNCH,
        "InstanceGroups": [
            {"InstanceGroupName": "controller-machine", "InstanceType": "ml.c5.xlarge", "CurrentCount": 1,
             "TargetCount": 1, "Status": "InService"},
            {"InstanceGroupName": "worker-group-1", "InstanceType": "ml.trn1.32xlarge", "CurrentCount": 2,
             "TargetCount": 2, "Status": "InService"},
        ],
    }


def node(instance_id: str, group: str, status: str = "Running") -> dict[str, Any]:
    return {"InstanceGroupName": group, "InstanceId": instance_id, "InstanceType": "ml.c5.xlarge",
            "LaunchTime": LAUNCH, "InstanceStatus": {"Status": status, "Message": ""}}


def stub_cluster(stubber: Stubber, nodes: list[list[dict[str, Any]]], status: str = "InService") -> None:
    stubber.add_response("describe_cluster", cluster_response(status), {"ClusterName": "ml-cluster"})
    for index, page in enumerate(nodes):
        params: dict[str, Any] = {"ClusterName": "ml-cluster"}
        if index:
            params["NextToken"] = f"t{index}"
        response: dict[str, Any] = {"ClusterNodeSummaries": page}
        if index < len(nodes) - 1:
            response["NextToken"] = f"t{index + 1}"
        stubber.add_response("list_cluster_nodes", response, params)


def test_describe_paginates_nodes(client: tuple[Any, Stubber]) -> None:
    real, stubber = client
    stub_cluster(stubber, [[node("i-0aaa", "controller-machine")],
                           [node("i-0bbb", "worker-group-1"), node("i-0ccc", "worker-group-1", "Pending")]])
    info = hyperpod.describe("ml-cluster", "us-west-2", real)
    assert info["id"] == "abcdef123456" and info["status"] == "InService"
    assert info["instance_groups"][1] == {"name": "worker-group-1", "type": "ml.trn1.32xlarge", "count": 2,
                                          "target": 2, "status": "InService"}
    assert [(n["id"], n["group"], n["status"]) for n in info["nodes"]] == [
        ("i-0aaa", "controller-machine", "Running"), ("i-0bbb", "worker-group-1", "Running"),
        ("i-0ccc", "worker-group-1", "Pending")]
    assert info["nodes"][0]["launch_time"] == "2026-11-01T09:30:00+00:00"
    text = hyperpod.format_describe(info)
    assert "cluster ml-cluster  id abcdef123456  status InService  region us-west-2" in text
    assert "worker-group-1" in text and "ml.trn1.32xlarge" in text and "2/2" in text and "i-0ccc" in text


def test_controller_target_builds_ssm_proxy(client: tuple[Any, Stubber]) -> None:
    real, stubber = client
    stub_cluster(stubber, [[node("i-0ccc", "worker-group-1"), node("i-0aaa", "controller-machine")]])
    remote = Remote(hyperpod=HyperPodTarget(cluster="ml-cluster", region="us-west-2"), user="ubuntu",
                    identity_file="~/.ssh/hp.pem", pipeline="/fsx/ubuntu/pipeline/.venv/bin/pipeline",
                    upload_dir="/fsx/ubuntu/uploads")
    assert remote.hyperpod is not None
    target = hyperpod.controller_target(remote.hyperpod, real, remote)
    ssm = "sagemaker-cluster:abcdef123456_controller-machine-i-0aaa"
    assert target.proxy_command == (f"aws ssm start-session --target {ssm} --document-name AWS-StartSSHSession "
                                    "--parameters portNumber=%p --region us-west-2")
    assert shlex.split(target.proxy_command)[4] == ssm
    assert (target.host, target.user, target.identity_file, target.pipeline, target.upload_dir) == \
        ("i-0aaa", "ubuntu", "~/.ssh/hp.pem", "/fsx/ubuntu/pipeline/.venv/bin/pipeline", "/fsx/ubuntu/uploads")


def test_controller_target_without_region_and_custom_group(client: tuple[Any, Stubber]) -> None:
    real, stubber = client
    stubber.add_response("describe_cluster", {**cluster_response(), "InstanceGroups": [
        {"InstanceGroupName": "head", "InstanceType": "ml.m5.xlarge", "CurrentCount": 1, "Status": "InService"}]},
        {"ClusterName": "ml-cluster"})
    stubber.add_response("list_cluster_nodes", {"ClusterNodeSummaries": [node("i-0head", "head")]},
                         {"ClusterName": "ml-cluster"})
    target = hyperpod.controller_target(HyperPodTarget(cluster="ml-cluster", controller_group="head"), real)
    assert target.proxy_command is not None and "--region" not in target.proxy_command
    assert "--target sagemaker-cluster:abcdef123456_head-i-0head " in target.proxy_command
    assert target.pipeline == "pipeline" and target.user is None


def test_no_running_controller_node(client: tuple[Any, Stubber]) -> None:
    real, stubber = client
    stub_cluster(stubber, [[node("i-0aaa", "controller-machine", "Pending")]], status="Creating")
    with pytest.raises(HyperPodError) as info:
        hyperpod.controller_target(HyperPodTarget(cluster="ml-cluster"), real)
    assert info.value.message == ("HyperPod cluster 'ml-cluster' (Creating) has no InService controller node in "
                                  "'controller-machine' (i-0aaa Pending)")


def test_unknown_controller_group(client: tuple[Any, Stubber]) -> None:
    real, stubber = client
    stub_cluster(stubber, [[node("i-0aaa", "controller-machine")]])
    with pytest.raises(HyperPodError, match="no instance group 'login'") as info:
        hyperpod.controller_target(HyperPodTarget(cluster="ml-cluster", controller_group="login"), real)
    assert "controller-machine, worker-group-1" in (info.value.hint or "")


@pytest.mark.parametrize(("code", "message", "expected"), [
    ("ResourceNotFound", "Cluster ml-cluster not found", "HyperPod cluster 'ml-cluster' not found in us-west-2"),
    ("ExpiredTokenException", "The security token included in the request is expired",
     "AWS credentials have expired"),
    ("AccessDeniedException", "User is not authorized to perform: sagemaker:DescribeCluster",
     "access denied: sagemaker describe_cluster on cluster 'ml-cluster'"),
    ("UnrecognizedClientException", "The security token included in the request is invalid",
     "AWS did not recognise these credentials"),
])
def test_aws_errors_are_one_line(client: tuple[Any, Stubber], code: str, message: str, expected: str) -> None:
    real, stubber = client
    status = 400 if code != "AccessDeniedException" else 403
    stubber.add_client_error("describe_cluster", service_error_code=code, service_message=message,
                             http_status_code=status, expected_params={"ClusterName": "ml-cluster"})
    with pytest.raises(HyperPodError) as info:
        hyperpod.controller_target(HyperPodTarget(cluster="ml-cluster", region="us-west-2"), real)
    assert info.value.message == expected
    assert "\n" not in info.value.message and info.value.hint


def test_expired_token_while_listing_nodes(client: tuple[Any, Stubber]) -> None:
    real, stubber = client
    stubber.add_response("describe_cluster", cluster_response(), {"ClusterName": "ml-cluster"})
    stubber.add_client_error("list_cluster_nodes", service_error_code="ExpiredTokenException",
                             service_message="expired", expected_params={"ClusterName": "ml-cluster"})
    with pytest.raises(HyperPodError) as info:
        hyperpod.describe("ml-cluster", "us-west-2", real)
    assert info.value.message == "AWS credentials have expired"


def test_resolve_dispatches_hyperpod_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """remote.resolve: a host profile needs no AWS; a HyperPod profile goes through SageMaker (here: without
    credentials, a clear error and no traceback)."""
    from orchestrator import remote as remotelib

    assert remotelib.resolve(Remote(host="head", user="u")).host == "head"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(HyperPodError, match="no AWS credentials found"):
        remotelib.resolve(Remote(hyperpod=HyperPodTarget(cluster="ml-cluster", region="us-west-2")))
