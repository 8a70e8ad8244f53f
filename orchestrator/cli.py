"""Command line: thin. Parse arguments, call one function per verb, print. Exit 0 ok, 1 expected failure."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import __version__, apply, plan, secrets, spec, status
from orchestrator import state as statelib
from orchestrator.errors import PipelineError

if TYPE_CHECKING:
    from orchestrator import remote as remote_types
from orchestrator.scheduler import Scheduler, for_cluster
from orchestrator.state import RunPaths, Store
from orchestrator.states import JobState

Verb = Callable[[argparse.Namespace], int]


def load_run(ref: str | None) -> tuple[Store, plan.Plan, Scheduler]:
    run_dir = statelib.find_run(ref)
    paths = RunPaths(run_dir)
    saved = plan.load_saved(json.loads(paths.plan.read_text(encoding="utf-8")), paths.root / "scripts")
    return Store(run_dir), saved, for_cluster(saved.cluster, run_dir)


def _forward_if_remote(args: argparse.Namespace, loaded: spec.Spec) -> int | None:
    """A spec whose cluster profile has `remote:` runs on that head node (unless we are that forwarded run)."""
    from orchestrator import remote

    if loaded.cluster.remote is None or os.environ.get(remote.FORWARDED_ENV):
        return None
    target = _with_remote_pipeline(args, remote.resolve(loaded.cluster.remote))
    return remote.forward(target, args.forward_argv, remote.referenced_files(Path(args.file)))


def _with_remote_pipeline(args: argparse.Namespace, target: remote_types.Target) -> remote_types.Target:
    """--remote-pipeline, else PIPELINE_REMOTE_PIPELINE, else what the profile (or the default) says: with --host
    there is no profile to hold remote.pipeline, so the flag or the variable must be able to say it."""
    from orchestrator import remote

    exe = args.remote_pipeline or os.environ.get(remote.REMOTE_PIPELINE_ENV)
    return dataclasses.replace(target, pipeline=exe) if exe else target


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = spec.load(Path(args.file))
    forwarded = _forward_if_remote(args, loaded)
    if forwarded is not None:
        return forwarded
    plan.build(loaded)  # rendering errors are spec errors too
    print(f"{args.file}: ok ({len(loaded.pipeline.stages)} stages, cluster {loaded.cluster.name})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    target = spec.ClusterProfile if args.cluster else spec.Pipeline
    print(json.dumps(target.model_json_schema(), indent=2))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    loaded = spec.load(Path(args.file))
    forwarded = _forward_if_remote(args, loaded)
    if forwarded is not None:
        return forwarded
    built = plan.build(loaded)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for stage in built.stages:
            statelib.atomic_write(out / f"{stage.name}.sh", stage.script, mode=0o755)
        statelib.write_json(out / "plan.json", built.to_json())
    if args.json:
        print(json.dumps(built.to_json(), indent=2))
        return 0
    print(f"pipeline {built.pipeline} on cluster {built.cluster.name} ({built.cluster.scheduler})")
    for stage in built.stages:
        after = ", ".join(stage.after) or "-"
        print(f"  {stage.name:<16} {stage.family}:{stage.kind:<12} after: {after:<24} {' '.join(stage.sbatch_flags())}")
    if not args.out:
        for stage in built.stages:
            print(f"\n# ===== {stage.name}.sh =====\n{stage.script}", end="")
    else:
        print(f"scripts written to {args.out}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    if args.resume:
        store, saved, scheduler = load_run(args.resume)
        with store.changing():
            status.refresh([store.paths.root])
            for line in apply.resume(store, saved, scheduler):
                print(line, file=sys.stderr)
        print(store.read().run_id)
        return _wait(store.paths.root, quiet=False) if args.wait else 0
    if not args.file:
        raise PipelineError("submit needs a pipeline file (or --resume RUN)")
    loaded = spec.load(Path(args.file))
    forwarded = _forward_if_remote(args, loaded)
    if forwarded is not None:
        return forwarded
    built = plan.build(loaded)  # every stage validated and rendered before the first sbatch
    for note in secrets.not_handed_over(built.secrets, os.environ):
        print(f"note: {note}", file=sys.stderr)
    root = apply.run_root(loaded, Path(args.run_root) if args.run_root else None)
    with contextlib.ExitStack() as hold:  # the run lock, from before the run is visible to the last state write
        store = apply.create_run(loaded, built, root, hold)
        scheduler = for_cluster(built.cluster, store.paths.root)
        run_id = store.read().run_id
        try:
            apply.submit_stages(store, built, scheduler, {s.name for s in built.stages})
        except PipelineError as exc:
            print(run_id)  # the run exists: whoever captures stdout gets its id, as after a clean submit
            raise partial_submit(store, exc) from None
    print(run_id)
    if args.wait:
        return _wait(store.paths.root, quiet=False)
    return 0


def partial_submit(store: Store, cause: PipelineError) -> PipelineError:
    """A submit that failed after the run directory exists: say which run, what is queued and what is not, and
    the two ways out (issue 13 item 7: a stage left NOT_SUBMITTED with no run id printed)."""
    state = store.read()
    done = [f"{n} (job {s.current.job_id})" for n, s in state.stages.items() if s.current is not None]
    missing = [n for n, s in state.stages.items() if s.current is None]
    return PipelineError(
        f"{cause.message}\nrun {state.run_id} ({store.paths.root}) is partly submitted: "
        f"queued {', '.join(done) or 'nothing'}; not submitted: {', '.join(missing) or 'none'}",
        f"fix the cause, then `pipeline submit --resume {state.run_id}` submits the rest; or give it up: "
        f"`pipeline cancel {state.run_id}` and `rm -r {store.paths.root}`")


def _wait(run_dir: Path, quiet: bool, cap_s: float = 30.0) -> int:
    """Poll with backoff (1, 2, 4 ... cap) until every stage is terminal; exit 0 only if all COMPLETED."""
    from orchestrator import live

    delay = 1.0
    screen = live.Screen()  # redraws in place on a terminal, appends changed tables elsewhere
    while True:
        view = status.refresh([run_dir])[0]
        if not quiet:
            screen.show(_table(view), view)
        states = [s.state for s in view.state.stages.values()]
        if all(s.terminal or s is JobState.NOT_SUBMITTED for s in states):  # a failed query shows UNKNOWN
            return 0 if all(s.ok for s in states) else 1
        time.sleep(delay)
        delay = min(screen.poll_cap(cap_s), delay * 2)


def _table(view: status.RunView) -> str:
    st = view.state
    lines = [f"run {st.run_id}  pipeline {st.pipeline}  cluster {st.cluster} ({st.scheduler})  {view.run_dir}"]
    if view.warning:
        lines.append(f"warning: {view.warning}")
    lines.append(f"  {'STAGE':<16} {'STATE':<14} {'JOB':<10} {'NODES':<14} {'ELAPSED':>9} {'EXIT':>4}  NOTE")
    for name, stage in st.stages.items():
        cur = stage.current
        if cur is None:
            lines.append(f"  {name:<16} {stage.state.value:<14}")
            continue
        note = cur.reason or ""
        if stage.state is JobState.PENDING and not note:  # Slurm gives no reason between scheduling passes
            note = "requeued; waiting to run again" if cur.restarts else "waiting"
        done = status.progress_note(status.progress(RunPaths(view.run_dir), name, cur))
        if done:  # how far the program got: while it runs, after it ends, and where a failed one stopped
            note = f"{note}; reached {done}" if note else done
        link = status.tracking_link(RunPaths(view.run_dir), name, cur)
        if link:
            note = f"{note}; tracker: {link}" if note else f"tracker: {link}"
        if stage.state.terminal and not stage.state.ok and stage.state is not JobState.CANCELLED:
            note = (note + f"; see: pipeline logs {st.run_id} {name}").lstrip("; ")
        restarted = status.restart_note(cur)
        if restarted:
            note = f"{restarted}; {note}".rstrip("; ")
        if len(stage.attempts) > 1:
            note = f"attempt {len(stage.attempts)}; {note}".rstrip("; ")
        exit_code = "" if cur.exit_code is None else str(cur.exit_code)
        lines.append(f"  {name:<16} {stage.state.value:<14} {cur.job_id.rsplit('/', 1)[-1]:<10} {cur.nodes or '':<14} "
                     f"{status.elapsed(cur):>9} {exit_code:>4}  {note}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _wait(statelib.find_run(args.run), quiet=False)
    views = status.refresh([statelib.find_run(args.run)])
    if args.json:
        print(json.dumps(status.to_json(views[0]), indent=2))
    else:
        print(_table(views[0]))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    runs = statelib.list_runs()[-args.last:]
    views = status.refresh(runs)  # one batched query for all shown runs
    if args.json:
        print(json.dumps([status.to_json(v) for v in views], indent=2))
        return 0
    for view in views:
        counts: dict[str, int] = {}
        for stage in view.state.stages.values():
            counts[stage.state.value] = counts.get(stage.state.value, 0) + 1
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"{view.state.run_id:<48} {view.state.created:<26} {summary}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    store, saved, scheduler = load_run(args.run)
    with store.changing():  # a second rerun waits here, then sees the stage active and refuses
        status.refresh([store.paths.root])
        released: list[str] = []
        submitted = apply.rerun(store, saved, scheduler, args.stage, getattr(args, "from"), released)
    for line in released:  # holds released on the run's own jobs (issue 13 item 4)
        print(line, file=sys.stderr)
    for name, job_id in submitted.items():
        print(f"{name}: {job_id}")
    if args.wait:
        return _wait(store.paths.root, quiet=False)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    store, saved, scheduler = load_run(args.run)
    with store.changing():
        status.refresh([store.paths.root])  # what ended meanwhile is not cancelled (nor reported as cancelled)
        ids = apply.cancel(store, saved, scheduler, args.stage)
    print(f"cancelled {len(ids)} job(s): {' '.join(ids)}" if ids else "nothing to cancel: no queued or running job")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    store, _, _ = load_run(args.run)
    state = store.read()
    if args.stage not in state.stages:
        raise PipelineError(f"run {state.run_id} has no stage {args.stage!r}", f"stages: {', '.join(state.stages)}")
    current = state.stages[args.stage].current
    if current is None:
        raise PipelineError(f"stage {args.stage} was never submitted")
    log = store.paths.log(args.stage, current.job_id)
    if not log.exists():
        print(f"(no log yet: {log}; the job has not started)")
        return 0
    _print_tail(log, args.lines)
    if args.follow:
        _follow(store.paths.root, args.stage, log)
    return 0


def _print_tail(log: Path, lines: int) -> None:
    with open(log, "rb") as handle:
        data = handle.read()
    tail = data.splitlines()[-lines:] if lines > 0 else data.splitlines()
    sys.stdout.write(b"\n".join(tail).decode("utf-8", "replace") + "\n")


def _follow(run_dir: Path, stage: str, log: Path) -> None:
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


def find_profile(name: str) -> spec.ClusterProfile:
    for directory in spec.default_cluster_dirs(Path.cwd() / "pipeline.yaml"):
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return spec.load_cluster(candidate)
    raise PipelineError(f"no cluster profile {name!r}", "looked in ./clusters, ~/.pipeline/clusters and pipeline's own")


def cmd_clusters(args: argparse.Namespace) -> int:
    """`clusters describe NAME`: a profile with remote.hyperpod, or a HyperPod cluster name (with --region)."""
    from orchestrator import hyperpod

    try:
        profile = find_profile(args.name)
        target = profile.remote.hyperpod if profile.remote else None
        if target is None:
            raise PipelineError(f"cluster profile {args.name!r} has no remote.hyperpod section")
        cluster, region = target.cluster, args.region or target.region
    except PipelineError:
        if (Path.cwd() / "clusters" / f"{args.name}.yaml").exists():
            raise
        cluster, region = args.name, args.region
    print(hyperpod.format_describe(hyperpod.describe(cluster, region)))
    return 0


def _forward_global(args: argparse.Namespace) -> int | None:
    """--host / --remote-cluster: run this whole command on a head node over SSH."""
    from orchestrator import remote

    if os.environ.get(remote.FORWARDED_ENV) or not (args.host or args.remote_cluster):
        return None
    if args.host:
        target = remote.Target.parse(args.host)
    else:
        profile = find_profile(args.remote_cluster)
        if profile.remote is None:
            raise PipelineError(f"cluster profile {args.remote_cluster!r} has no `remote:` section")
        target = remote.resolve(profile.remote)
    target = _with_remote_pipeline(args, target)
    file = getattr(args, "file", None)
    uploads = remote.referenced_files(Path(file)) if file and args.verb in ("submit", "validate", "render") else None
    return remote.forward(target, args.forward_argv, uploads)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator import report

    run_dir = statelib.find_run(args.run)
    page, png = report.write(run_dir, Path(args.out) if args.out else RunPaths(run_dir).root / "report")
    print(f"{page}\n{png}")
    if args.open:
        import webbrowser

        webbrowser.open(page.resolve().as_uri())
    return 0


def cmd_dev_cluster(args: argparse.Namespace) -> int:
    from orchestrator import devcluster

    return devcluster.main([args.action, "--dir", args.dir, "--nodes", str(args.nodes)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="LLM fine-tuning chains on Slurm, from one YAML.")
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    parser.add_argument("--host", help="run the command on this head node over SSH ([user@]host[:port] or alias)")
    parser.add_argument("--remote-cluster", metavar="NAME", help="run it on the head node of cluster profile NAME")
    parser.add_argument("--remote-pipeline", metavar="PATH",
                        help="the pipeline executable on the head node (default: remote.pipeline, then `pipeline`; "
                             "also PIPELINE_REMOTE_PIPELINE)")
    sub = parser.add_subparsers(dest="verb", required=True)

    def verb(name: str, func: Verb, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = verb("validate", cmd_validate, "check a pipeline file; errors name file, line and key")
    p.add_argument("file")
    p = verb("schema", cmd_schema, "print the JSON Schema of pipeline files (for editor completion)")
    p.add_argument("--cluster", action="store_true", help="the schema of cluster profiles instead")
    p = verb("render", cmd_render, "render every stage script and print the dependency plan; submits nothing")
    p.add_argument("file")
    p.add_argument("--out", help="write scripts and plan.json to this folder")
    p.add_argument("--json", action="store_true")
    p = verb("submit", cmd_submit, "validate, render and submit the whole chain; prints the run id")
    p.add_argument("file", nargs="?")
    p.add_argument("--resume", metavar="RUN", help="finish an interrupted submission: no stage is submitted twice")
    p.add_argument("--run-root", help="where run directories go (default: cluster profile, then ~/.pipeline/runs)")
    p.add_argument("--wait", action="store_true", help="stay and print status until the run ends")
    p = verb("status", cmd_status, "state, job, nodes, elapsed, exit code and reason of each stage")
    p.add_argument("run", nargs="?", help="run id or directory (default: the latest run)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true", help="refresh with backoff until the run ends")
    p = verb("list", cmd_list, "known runs with a state summary (one scheduler query for all)")
    p.add_argument("--last", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p = verb("rerun", cmd_rerun, "resubmit failed stages and what depends on them; completed stages stay")
    p.add_argument("run", nargs="?")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stage", help="rerun this stage and everything downstream of it")
    group.add_argument("--from", help="rerun this stage and every stage after it in the chain")
    p.add_argument("--wait", action="store_true")
    p = verb("cancel", cmd_cancel, "cancel queued/running jobs of a run (or of one stage and its dependents)")
    p.add_argument("run", nargs="?")
    p.add_argument("--stage")
    p = verb("logs", cmd_logs, "print the tail of a stage's latest log")
    p.add_argument("run")
    p.add_argument("stage")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")
    p = verb("clusters", cmd_clusters, "describe a SageMaker HyperPod cluster: instance groups and node health")
    p.add_argument("action", choices=["describe"])
    p.add_argument("name", help="cluster profile with remote.hyperpod, or a HyperPod cluster name")
    p.add_argument("--region")
    p = verb("report", cmd_report, "one HTML page + PNG: timeline, loss curves, evaluation, resources and cost")
    p.add_argument("run", nargs="?", help="run id or directory (default: the latest run)")
    p.add_argument("--out", help="folder for report.html and report.png (default: <run dir>/report)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p = verb("dev-cluster", cmd_dev_cluster, "boot or stop a throwaway Slurm cluster on this machine (root)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", default=str(Path.home() / ".pipeline" / "dev-cluster"))
    p.add_argument("--nodes", type=int, default=4)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    # What a head node runs: the command from its verb on, without our global --host/--remote-cluster.
    args.forward_argv = raw[raw.index(args.verb):] if args.verb in raw else raw
    try:
        forwarded = _forward_global(args)
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
