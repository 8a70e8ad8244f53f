"""Command line: thin. Build the parser from the verb modules (orchestrator/commands/), forward the command to a
remote head node when asked, else run the verb. Exit 0 ok, 1 expected failure."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import __version__, loader
from orchestrator.commands import (
    cancel,
    clusters,
    dev_cluster,
    logs,
    render,
    report,
    rerun,
    schema,
    spec_path,
    status,
    submit,
    upload_path,
    validate,
)
from orchestrator.commands import list as list_verb
from orchestrator.errors import PipelineError

if TYPE_CHECKING:
    from orchestrator import remote as remote_types

VERBS = (validate, schema, render, submit, status, list_verb, rerun, cancel, logs, clusters, report, dev_cluster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="LLM fine-tuning chains on Slurm, from one YAML.")
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    parser.add_argument("--host", help="run the command on this head node over SSH ([user@]host[:port] or alias)")
    parser.add_argument("--remote-cluster", metavar="NAME", help="run it on the head node of cluster profile NAME")
    parser.add_argument("--remote-pipeline", metavar="PATH",
                        help="the pipeline executable on the head node (default: remote.pipeline, then `pipeline`; "
                             "also PIPELINE_REMOTE_PIPELINE)")
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return parser


def forward(args: argparse.Namespace) -> int | None:
    """The one remote path: run this command on a head node over SSH, with the files its pipeline file
    references uploaded; None: run it here."""
    from orchestrator import remote

    file = spec_path(args)
    target = _target(args, file)
    if target is None:
        return None
    upload = upload_path(args)
    uploads = loader.referenced_files(upload) if upload else None
    return remote.forward(_remote_pipeline(args, target), args.forward_argv, uploads)


def _target(args: argparse.Namespace, file: Path | None) -> remote_types.Target | None:
    """--host / --remote-cluster, else the `remote:` of the pipeline file's cluster profile; never when we are the
    forwarded run. It loads the verb's pipeline file into `args.spec` (validate, render, submit), once: the spec
    says whether to forward, and the verb uses it. With --host the file is not loaded here, only uploaded."""
    from orchestrator import remote

    here = bool(os.environ.get(remote.FORWARDED_ENV))
    if not here and (args.host or args.remote_cluster):
        return _global_target(args)
    overrides = getattr(args, "overrides", None) or ()
    args.spec = loader.load(file, overrides=overrides) if file and not getattr(args, "resume", None) else None
    if here or args.spec is None or args.spec.cluster.remote is None:
        return None
    return remote.resolve(args.spec.cluster.remote)


def _global_target(args: argparse.Namespace) -> remote_types.Target:
    from orchestrator import remote

    if args.host:
        return remote.Target.parse(args.host)
    profile = loader.find_profile(args.remote_cluster)
    if profile.remote is None:
        raise PipelineError(f"cluster profile {args.remote_cluster!r} has no `remote:` section")
    return remote.resolve(profile.remote)


def _remote_pipeline(args: argparse.Namespace, target: remote_types.Target) -> remote_types.Target:
    """--remote-pipeline, else PIPELINE_REMOTE_PIPELINE, else what the profile (or the default) says: with --host
    there is no profile to hold remote.pipeline, so the flag or the variable must be able to say it."""
    from orchestrator import remote

    exe = args.remote_pipeline or os.environ.get(remote.REMOTE_PIPELINE_ENV)
    return dataclasses.replace(target, pipeline=exe) if exe else target


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    # What a head node runs: the command from its verb on, without our global --host/--remote-cluster.
    args.forward_argv = raw[raw.index(args.verb):] if args.verb in raw else raw
    try:
        forwarded = forward(args)
        if forwarded is not None:
            return forwarded
        result: int = args.func(args)
        return result
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pipeline status | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
