"""`pipeline render FILE [--out DIR] [--json]`: every stage script and the dependency plan; submits nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from orchestrator import cache, plan
from orchestrator import state as statelib
from orchestrator.commands import Subparsers, add_cache_flags, add_set_flag, add_verb, cache_options
from orchestrator.layout import RunPaths


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "render", run, "render every stage script and print the dependency plan; submits nothing")
    p.add_argument("file")
    p.add_argument("--out", help="write scripts and plan.json to this folder")
    p.add_argument("--json", action="store_true")
    add_set_flag(p)
    add_cache_flags(p)
    p.set_defaults(spec_file=True)


def run(args: argparse.Namespace) -> int:
    built = plan.build(args.spec)
    if args.out:
        write(built, Path(args.out))
    if args.json:
        print(json.dumps(built.to_json(), indent=2))
        return 0
    print(f"pipeline {built.pipeline} on cluster {built.cluster.name} ({built.cluster.scheduler})")
    for stage in built.stages:
        after = ", ".join(stage.after) or "-"
        print(f"  {stage.name:<16} {stage.family}:{stage.kind:<12} key {stage.key[:12]}  after: {after:<24} "
              f"{' '.join(stage.sbatch_flags())}")
    print("cache (what `pipeline submit` would do now, by the state files as last seen):")
    # refresh=False: render asks no scheduler; a source still queued here is not reused, which submit re-checks
    decisions = cache.decide(built, [s.name for s in built.stages], cache_options(args), refresh=False)
    print("\n".join(cache.describe(built, decisions)))
    if not args.out:
        for stage in built.stages:
            print(f"\n# ===== {stage.name}.sh =====\n{stage.script}", end="")
    else:
        print(f"scripts written to {args.out}")
    return 0


def write(built: plan.Plan, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stage in built.stages:
        statelib.atomic_write(out / f"{stage.name}.sh", stage.script, mode=0o755)
    statelib.write_json(RunPaths(out).plan, built.to_json())  # named as in a run directory
