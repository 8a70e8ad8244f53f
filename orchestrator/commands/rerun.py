"""`pipeline rerun [RUN] [--stage S | --from S] [--variant V] [--wait]`: resubmit failed stages and what depends on them;
`pipeline rerun RUN --spec EDITED.yaml [--set K=V]`: re-plan the run from an edited file (issue 14 item 3)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator import cache, live, loader, plan, rerun_cancel, spec, status
from orchestrator import replan as replan_mod
from orchestrator.commands import Subparsers, add_cache_flags, add_set_flag, add_verb, cache_options, load_run
from orchestrator.errors import PipelineError
from orchestrator.state import Store


def add_parser(sub: Subparsers) -> None:
    p = add_verb(sub, "rerun", run, "resubmit failed stages and what depends on them; completed stages stay")
    p.add_argument("run", nargs="?")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stage", help="rerun this stage and everything downstream of it")
    group.add_argument("--from", help="rerun this stage and every stage after it in the chain")
    p.add_argument("--variant", help="a sweep's variant (name or index): rerun only its stages (with --stage/--from: "
                                      "that stage of this variant)")
    p.add_argument("--spec", dest="edited", metavar="FILE",
                   help="re-plan from this edited pipeline file: stages whose key changed (and their dependents) "
                        "run again, the others keep their results")
    p.set_defaults(upload_arg="edited")  # forwarded (--host): FILE and the files it references go up with it
    add_set_flag(p)  # without --spec: re-plan from the file the run's newest spec came from, with these changes
    add_cache_flags(p)
    p.add_argument("--wait", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.edited or args.overrides:
        return replan(args)
    store, saved, scheduler = load_run(args.run)
    with store.changing():  # a second rerun waits here, then sees the stage active and refuses
        status.refresh([store.paths.root])
        released: list[str] = []
        submitted = rerun_cancel.rerun(store, saved, scheduler, args.stage, getattr(args, "from"), released,
                                variant=args.variant)
    for line in released:  # holds released on the run's own jobs (issue 13 item 4)
        print(line, file=sys.stderr)
    for name, job_id in submitted.items():
        print(f"{name}: {job_id}")
    return live.wait(store.paths.root) if args.wait else 0


def replan(args: argparse.Namespace) -> int:
    if args.stage or getattr(args, "from"):
        raise PipelineError("--spec/--set re-plan the whole run; they do not combine with --stage/--from",
                            "the stages whose key changed are chosen for you; add --force STAGE to run one anyway")
    store, saved, scheduler = load_run(args.run)
    loaded = _edited_spec(store, args)
    built = plan.build(loaded)  # the edited file is validated and rendered before the run is touched
    notes: list[str] = []
    with store.changing():
        status.refresh([store.paths.root])
        decisions = replan_mod.replan(store, saved, loaded, built, scheduler, cache_options(args), notes)
    for line in notes:
        print(line, file=sys.stderr)
    _print_resubmitted(store, decisions)
    return live.wait(store.paths.root) if args.wait else 0


def _edited_spec(store: Store, args: argparse.Namespace) -> spec.Spec:
    if args.edited:
        return loader.load(Path(args.edited), overrides=args.overrides)
    state = store.read()
    if not state.spec_source:
        raise PipelineError(f"run {state.run_id} does not record which file its spec came from",
                            f"name it: pipeline rerun {state.run_id} --spec FILE --set ...")
    print(f"re-planning from {state.spec_source} (as it is now) with the run's "
          f"{len(state.spec_overrides)} earlier --set and {len(args.overrides)} new", file=sys.stderr)
    return loader.load(Path(state.spec_source), overrides=[*state.spec_overrides, *args.overrides])


def _print_resubmitted(store: Store, decisions: dict[str, cache.Decision]) -> None:
    state = store.read()
    version = state.spec_version
    for name, decision in decisions.items():
        current = state.stages[name].current
        if current is None:
            continue
        if decision.reuse:
            print(f"{name}: CACHED ({decision.reason})")
        else:
            print(f"{name}: {current.job_id} (spec {version}; {decision.reason})")
