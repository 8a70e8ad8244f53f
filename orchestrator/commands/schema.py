"""`pipeline schema [--cluster]`: the JSON Schema of pipeline files or of cluster profiles."""

from __future__ import annotations

import argparse
import json

from orchestrator import spec
from orchestrator.commands import Subparsers, add_verb


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "schema", run, "print the JSON Schema of pipeline files (for editor completion)")
    p.add_argument("--cluster", action="store_true", help="the schema of cluster profiles instead")


def run(args: argparse.Namespace) -> int:
    target = spec.ClusterProfile if args.cluster else spec.Pipeline
    print(json.dumps(target.model_json_schema(), indent=2))
    return 0
