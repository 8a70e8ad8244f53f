"""`pipeline logs RUN STAGE [-n N] [-f]`: the tail of a stage's latest log, and with -f what it writes next."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from orchestrator import status
from orchestrator.commands import Subparsers, add_verb, load_run
from orchestrator.errors import PipelineError
from orchestrator.state import RunPaths


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "logs", run, "print the tail of a stage's latest log")
    p.add_argument("run")
    p.add_argument("stage")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")


def run(args: argparse.Namespace) -> int:
    store, _, _ = load_run(args.run)
    state = store.read()
    if args.stage not in state.stages:
        raise PipelineError(f"run {state.run_id} has no stage {args.stage!r}", f"stages: {', '.join(state.stages)}")
    current = state.stages[args.stage].current
    if current is None:
        raise PipelineError(f"stage {args.stage} was never submitted")
    log = store.paths.log(args.stage, current.job_id)
    source = current.cached_from
    if source is not None:  # CACHED: no job here; the log is that of the job that made the outputs
        print(f"(stage {args.stage} is CACHED from run {source.run_id}, job {source.job_id}: its log)")
        log = RunPaths(Path(source.run_dir)).log(source.stage, source.job_id)
    if not log.exists():
        print(f"(no log yet: {log}; the job has not started)")
        return 0
    print_tail(log, args.lines)
    if args.follow:
        follow(store.paths.root, args.stage, log)
    return 0


def print_tail(log: Path, lines: int) -> None:
    with open(log, "rb") as handle:
        data = handle.read()
    tail = data.splitlines()[-lines:] if lines > 0 else data.splitlines()
    sys.stdout.write(b"\n".join(tail).decode("utf-8", "replace") + "\n")


def follow(run_dir: Path, stage: str, log: Path) -> None:
    """Print what the log gains until the stage is terminal (the scheduler says so, not the log)."""
    with open(log, "rb") as handle:
        handle.seek(0, 2)
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
                continue
            view = status.refresh([run_dir])[0]
            if view.state.stages[stage].state.terminal:
                return
            time.sleep(1.0)
