"""`pipeline submit FILE [--run-root DIR] [--wait]` and `pipeline submit --resume RUN`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from orchestrator import apply, cache, live, plan, secrets, status
from orchestrator.commands import Subparsers, add_cache_flags, add_set_flag, add_verb, cache_options, load_run
from orchestrator.errors import PartlySubmitted, PipelineError
from orchestrator.spec import Spec


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "submit", run, "validate, render and submit the whole chain; prints the run id")
    p.add_argument("file", nargs="?")
    p.add_argument("--resume", metavar="RUN", help="finish an interrupted submission: no stage is submitted twice")
    p.add_argument("--run-root", help="where run directories go (default: cluster profile, then ~/.pipeline/runs)")
    p.add_argument("--wait", action="store_true", help="stay and print status until the run ends")
    p.add_argument("--dry-run", action="store_true",
                   help="say which stages an earlier run already produced (reused) and why each other one runs; "
                        "submits nothing")
    add_set_flag(p)
    add_cache_flags(p)
    p.set_defaults(spec_file=True)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        return resume(args)
    if not args.file:
        raise PipelineError("submit needs a pipeline file (or --resume RUN)")
    loaded: Spec = args.spec
    built = plan.build(loaded)  # every stage validated and rendered before the first sbatch
    if args.dry_run:
        decisions = cache.decide(built, [s.name for s in built.stages], cache_options(args))
        reused = sum(d.reuse for d in decisions.values())
        print(f"dry run: {len(decisions) - reused} stage(s) would be submitted, {reused} reused")
        print("\n".join(cache.describe(built, decisions)))
        return 0
    for note in secrets.not_handed_over(built.secrets, os.environ):
        print(f"note: {note}", file=sys.stderr)
    root = apply.run_root(loaded, Path(args.run_root) if args.run_root else None)
    try:
        store = apply.submit(loaded, built, root, cache_options(args))
    except PartlySubmitted as exc:
        print(exc.run_id)  # the run exists: whoever captures stdout gets its id, as after a clean submit
        raise
    for line in cache.reused_lines(store):
        print(line, file=sys.stderr)
    print(store.read().run_id)
    return live.wait(store.paths.root) if args.wait else 0


def resume(args: argparse.Namespace) -> int:
    store, saved, scheduler = load_run(args.resume)
    with store.changing():
        status.refresh([store.paths.root])
        for line in apply.resume(store, saved, scheduler):
            print(line, file=sys.stderr)
    print(store.read().run_id)
    return live.wait(store.paths.root) if args.wait else 0
