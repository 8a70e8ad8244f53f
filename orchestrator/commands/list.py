"""`pipeline list [--last N] [--json]`: known runs with a state summary, one scheduler query for all."""

from __future__ import annotations

import argparse
import json

from orchestrator import state as statelib
from orchestrator import status, table
from orchestrator.commands import Subparsers, add_verb


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "list", run, "known runs with a state summary (one scheduler query for all)")
    p.add_argument("--last", type=int, default=20)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    views = status.refresh(statelib.list_runs()[-args.last:])  # one batched query for all shown runs
    if args.json:
        print(json.dumps([status.to_json(v) for v in views], indent=2))
        return 0
    for view in views:
        print(table.run_line(view))
    return 0
