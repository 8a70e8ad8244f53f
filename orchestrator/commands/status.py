"""`pipeline status [RUN] [--json] [--watch]`: state, job, nodes, elapsed, exit code and reason of each stage."""

from __future__ import annotations

import argparse
import json

from orchestrator import live, status, table
from orchestrator import state as statelib
from orchestrator.commands import Subparsers, add_verb


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "status", run, "state, job, nodes, elapsed, exit code and reason of each stage")
    p.add_argument("run", nargs="?", help="run id or directory (default: the latest run)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true", help="refresh with backoff until the run ends")


def run(args: argparse.Namespace) -> int:
    if args.watch:
        return live.wait(statelib.find_run(args.run))
    view = status.refresh([statelib.find_run(args.run)])[0]
    print(json.dumps(status.to_json(view), indent=2) if args.json else table.run_table(view))
    return 0
