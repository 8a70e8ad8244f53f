"""`pipeline dev-cluster up|down|status`: a throwaway Slurm cluster on this machine (orchestrator.devcluster)."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.commands import Subparsers, add_verb


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "dev-cluster", run, "boot or stop a throwaway Slurm cluster on this machine (root)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", default=str(Path.home() / ".pipeline" / "dev-cluster"))
    p.add_argument("--nodes", type=int, default=4)


def run(args: argparse.Namespace) -> int:
    from orchestrator import devcluster

    return devcluster.main([args.action, "--dir", args.dir, "--nodes", str(args.nodes)])
