"""`pipeline clusters describe NAME [--region R]`: a SageMaker HyperPod cluster's instance groups and node health."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator import loader
from orchestrator.commands import Subparsers, add_verb
from orchestrator.errors import PipelineError


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "clusters", run, "describe a SageMaker HyperPod cluster: instance groups and node health")
    p.add_argument("action", choices=["describe"])
    p.add_argument("name", help="cluster profile with remote.hyperpod, or a HyperPod cluster name")
    p.add_argument("--region")


def run(args: argparse.Namespace) -> int:
    """NAME is a profile with remote.hyperpod, or else a HyperPod cluster name (then --region says where)."""
    from orchestrator import hyperpod

    try:
        profile = loader.find_profile(args.name)
        target = profile.remote.hyperpod if profile.remote else None
        if target is None:
            raise PipelineError(f"cluster profile {args.name!r} has no remote.hyperpod section")
        cluster, region = target.cluster, args.region or target.region
    except PipelineError:
        if (Path.cwd() / "clusters" / f"{args.name}.yaml").exists():
            raise
        cluster, region = args.name, args.region
    print(hyperpod.format_describe(hyperpod.describe(cluster, region)))
    return 0
