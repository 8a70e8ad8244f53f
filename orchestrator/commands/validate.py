"""`pipeline validate FILE`: load, validate and render a pipeline file; submits nothing."""

from __future__ import annotations

import argparse

from orchestrator import plan
from orchestrator.commands import Subparsers, add_verb
from orchestrator.spec import Spec


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "validate", run, "check a pipeline file; errors name file, line and key")
    p.add_argument("file")
    p.set_defaults(spec_file=True)


def run(args: argparse.Namespace) -> int:
    loaded: Spec = args.spec  # loaded by cli.main, before it decides whether to forward
    plan.build(loaded)  # rendering errors are spec errors too
    print(f"{args.file}: ok ({len(loaded.pipeline.stages)} stages, cluster {loaded.cluster.name})")
    return 0
