"""`pipeline report [RUN] [--out DIR] [--open]`: one HTML page + PNG of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator import state as statelib
from orchestrator.commands import Subparsers, add_verb
from orchestrator.state import RunPaths


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "report", run, "one HTML page + PNG: timeline, loss curves, evaluation, resources and cost")
    p.add_argument("run", nargs="?", help="run id or directory (default: the latest run)")
    p.add_argument("--out", help="folder for report.html and report.png (default: <run dir>/report)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")


def run(args: argparse.Namespace) -> int:
    from orchestrator import report  # late: only this verb needs the report code

    run_dir = statelib.find_run(args.run)
    page, png = report.write(run_dir, Path(args.out) if args.out else RunPaths(run_dir).report)
    print(f"{page}\n{png}")
    if args.open:
        import webbrowser

        webbrowser.open(page.resolve().as_uri())
    return 0
