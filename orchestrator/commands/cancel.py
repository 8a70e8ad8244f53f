"""`pipeline cancel [RUN] [--stage S]`: cancel queued/running jobs of a run, or of one stage and its dependents."""

from __future__ import annotations

import argparse

from orchestrator import rerun_cancel, status
from orchestrator.commands import Subparsers, add_verb, load_run


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "cancel", run, "cancel queued/running jobs of a run (or of one stage and its dependents)")
    p.add_argument("run", nargs="?")
    p.add_argument("--stage")


def run(args: argparse.Namespace) -> int:
    store, saved, scheduler = load_run(args.run)
    with store.changing():
        status.refresh([store.paths.root])  # what ended meanwhile is not cancelled (nor reported as cancelled)
        ids = rerun_cancel.cancel(store, saved, scheduler, args.stage)
    print(f"cancelled {len(ids)} job(s): {' '.join(ids)}" if ids else "nothing to cancel: no queued or running job")
    return 0
