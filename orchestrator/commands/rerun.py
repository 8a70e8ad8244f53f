"""`pipeline rerun [RUN] [--stage S | --from S] [--wait]`: resubmit failed stages and what depends on them."""

from __future__ import annotations

import argparse
import sys

from orchestrator import apply, live, status
from orchestrator.commands import Subparsers, add_verb, load_run


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "rerun", run, "resubmit failed stages and what depends on them; completed stages stay")
    p.add_argument("run", nargs="?")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stage", help="rerun this stage and everything downstream of it")
    group.add_argument("--from", help="rerun this stage and every stage after it in the chain")
    p.add_argument("--wait", action="store_true")


def run(args: argparse.Namespace) -> int:
    store, saved, scheduler = load_run(args.run)
    with store.changing():  # a second rerun waits here, then sees the stage active and refuses
        status.refresh([store.paths.root])
        released: list[str] = []
        submitted = apply.rerun(store, saved, scheduler, args.stage, getattr(args, "from"), released)
    for line in released:  # holds released on the run's own jobs (issue 13 item 4)
        print(line, file=sys.stderr)
    for name, job_id in submitted.items():
        print(f"{name}: {job_id}")
    return live.wait(store.paths.root) if args.wait else 0
