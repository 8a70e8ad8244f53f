"""One module a verb (as pre-commit's pre_commit/commands/): each has `add_parser(subparsers)`, which declares the
verb's flags, and `run(args) -> int`, which calls one function of the layers below and prints. orchestrator.cli
builds the parser from them, forwards to a remote head node when asked, and maps errors to exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from orchestrator import cache, plan
from orchestrator import state as statelib
from orchestrator.scheduler import Scheduler, for_cluster
from orchestrator.state import Store

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # argparse's own name for it

Run = Callable[[argparse.Namespace], int]


def add_verb(sub: Subparsers, name: str, run: Run, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(func=run, spec_file=False, spec=None, upload_arg=None)
    return parser


def load_run(ref: str | None) -> tuple[Store, plan.Plan, Scheduler]:
    """The run `ref` (id, directory, or the latest run), its saved plan and its scheduler."""
    run_dir = statelib.find_run(ref)
    store = Store(run_dir)
    saved = store.read_plan()
    return store, saved, for_cluster(saved.cluster, run_dir)


def add_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", dest="overrides",
                        help="change one value of the pipeline file (YAML-typed; repeatable), e.g. "
                             "--set stages.finetune.params.lr=2.0e-4 (a stage by name or index)")


def add_cache_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="run every stage, even one an earlier run already produced with the same key")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="run this stage (and what depends on it) even if an earlier run has it (repeatable)")


def cache_options(args: argparse.Namespace) -> cache.Options:
    return cache.Options(enabled=not args.no_cache, force=frozenset(args.force))


def spec_path(args: argparse.Namespace) -> Path | None:
    """The pipeline file of a verb that takes one (validate, render, submit), else None."""
    file: str | None = getattr(args, "file", None)
    return Path(file) if args.spec_file and file else None


def upload_path(args: argparse.Namespace) -> Path | None:
    """The pipeline file a forwarded command needs on the head node, uploaded with the files it references: the
    verb's own, or the one its `upload_arg` option names (rerun --spec FILE)."""
    named: str | None = getattr(args, args.upload_arg, None) if args.upload_arg else None
    return spec_path(args) or (Path(named) if named else None)
