"""`pipeline validate FILE`: load, validate and render a pipeline file; submits nothing."""

from __future__ import annotations

import argparse

from orchestrator import plan
from orchestrator.commands import Subparsers, add_set_flag, add_verb
from orchestrator.spec import Spec


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "validate", run, "check a pipeline file; errors name file, line and key")
    p.add_argument("file")
    add_set_flag(p)
    p.set_defaults(spec_file=True)


def run(args: argparse.Namespace) -> int:
    loaded: Spec = args.spec  # loaded by cli.main, before it decides whether to forward
    built = plan.build(loaded)  # rendering errors are spec errors too
    swept = (f", {len(built.variants)} sweep variants: {len(built.stages)} stages in all, "
             f"{sum(not s.variant for s in built.stages)} shared") if built.variants else ""
    print(f"{args.file}: ok ({len(loaded.pipeline.stages)} stages{swept}, cluster {loaded.cluster.name})")
    return 0
