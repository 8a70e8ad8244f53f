"""Benchmark: a 7-stage chain of `sleep 1` stages, `pipeline submit` vs a plain bash loop of sbatch calls.

Run on the test cluster (boots one if SLURM_CONF is unset, as root):
    .venv/bin/python bench/submit_chain.py [--repeat 3]
Reports, in one session so the ratios are fair on a noisy machine:
  (a) wall time of `pipeline submit` (interpreter start included) and of the raw sbatch loop;
  (b) makespan (first stage start -> last stage end, from sacct) as a ratio to the raw chain;
  (c) accounting RPCs that one `pipeline status` makes over 100 runs (slurmdbd: sacctmgr show stats;
      slurmctld: sdiag), and the same for `pipeline list --last 100`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIPELINE = [sys.executable, "-m", "orchestrator.cli"]
SPEC = """name: bench
cluster: {name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:05:00"}}
stages:
""" + "".join(f'  - {{name: s{i}, kind: command, run: "sleep 1"}}\n' for i in range(7))


def sh(argv: list[str], **kw: object) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, **kw).stdout  # type: ignore[call-overload]


def raw_chain(workdir: Path, chains: int = 1) -> tuple[float, list[str]]:
    """`chains` independent 7-job afterok chains of `sleep 1`, submitted by a plain bash loop of sbatch calls."""
    script = workdir / "raw.sh"
    script.write_text("#!/bin/bash\nsleep 1\n")
    loop = (f"for c in $(seq {chains}); do prev=; for i in 0 1 2 3 4 5 6; do dep=${{prev:+--dependency=afterok:$prev}}; "
            f"prev=$(sbatch --parsable --kill-on-invalid-dep=yes -t 5 -o {workdir}/raw-%j.out $dep {script}); "
            f"echo $prev; done; done")
    start = time.perf_counter()
    out = sh(["bash", "-c", loop])
    return time.perf_counter() - start, out.split()


def pipeline_chain(spec: Path) -> tuple[float, list[str]]:
    start = time.perf_counter()
    run_id = sh([*PIPELINE, "submit", str(spec)], cwd=REPO).strip()
    elapsed = time.perf_counter() - start
    data = json.loads(sh([*PIPELINE, "status", run_id, "--json"], cwd=REPO))
    return elapsed, [s["attempts"][-1]["job_id"] for s in data["stages"].values()]


def accounted(job_ids: list[str], timeout: float = 300.0) -> list[dict[str, str]]:
    """sacct's row of each job (-X: allocations only) once every one COMPLETED with its Start and End recorded
    (slurmdbd is updated after the controller); exits on a failed job or after timeout. The one sacct poller of
    the benches: makespan here and in sweep.py, node-seconds in cache.py."""
    fields = ("JobIDRaw", "State", "ElapsedRaw", "NNodes", "Start", "End")
    deadline = time.time() + timeout
    while True:
        out = sh(["sacct", "-X", "-n", "-P", "-o", ",".join(fields), "-j", ",".join(job_ids)])
        rows = [dict(zip(fields, line.split("|"))) for line in out.split()]
        if len(rows) == len(job_ids) and all(r["State"] == "COMPLETED" and r["End"] not in ("", "Unknown")
                                             for r in rows):
            return rows
        if any(r["State"] not in ("PENDING", "RUNNING", "COMPLETED", "COMPLETING") for r in rows):
            raise SystemExit(f"a benchmark job failed: {rows}")
        if time.time() > deadline:
            raise SystemExit(f"benchmark jobs did not finish in {timeout:.0f} s: {rows}")
        time.sleep(1)


def span_s(rows: list[dict[str, str]]) -> float:
    """First start to last end, in seconds."""
    starts = [datetime.fromisoformat(r["Start"]) for r in rows]
    return (max(datetime.fromisoformat(r["End"]) for r in rows) - min(starts)).total_seconds()


def makespan(job_ids: list[str], timeout: float = 300.0) -> float:
    return span_s(accounted(job_ids, timeout))


def _count(text: str, types: tuple[str, ...]) -> int:
    section = text.split("Remote Procedure Call statistics by message type", 1)[-1]
    section = section.split("Remote Procedure Call statistics by user", 1)[0]
    return sum(int(m.group(2)) for m in re.finditer(r"^\s*(\w+)\s*\(\s*\d+\)\s*count:\s*(\d+)", section, re.MULTILINE)
               if m.group(1) in types)


def dbd_rpcs() -> int:
    """Job queries slurmdbd has served (DBD_GET_JOBS_COND: one per sacct call; the controller's own
    background RPCs such as DBD_NODE_STATE are not ours and are left out)."""
    return _count(sh(["sacctmgr", "show", "stats"]), ("DBD_GET_JOBS_COND",))


def ctld_rpcs() -> int:
    """Job-information queries slurmctld has served (squeue, scontrol show job)."""
    return _count(sh(["sdiag"]), ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE", "REQUEST_JOB_USER_INFO"))


def status_rpcs(spec: Path, runs: int) -> dict[str, int]:
    """Submit `runs` one-stage runs, then count the RPCs of the first `status` and `list` over all of them.

    Their state files still say PENDING, so `list` must ask the scheduler about all 100 jobs: in one call.
    """
    cheap = spec.with_name("cheap.yaml")
    cheap.write_text(SPEC.split("stages:")[0] + 'stages:\n  - {name: s0, kind: command, run: "true"}\n')
    for _ in range(runs):
        sh([*PIPELINE, "submit", str(cheap)], cwd=REPO)
    result = {}
    for label, argv in (("status", [*PIPELINE, "status"]), ("list", [*PIPELINE, "list", "--last", str(runs)])):
        db0, ct0 = dbd_rpcs(), ctld_rpcs()
        sh(argv, cwd=REPO)
        db1, ct1 = dbd_rpcs(), ctld_rpcs()
        result[f"{label}_sacct_job_queries"] = db1 - db0
        result[f"{label}_slurmctld_job_queries"] = ct1 - ct0
    return result


@contextlib.contextmanager
def cluster() -> Iterator[None]:
    """The cluster SLURM_CONF points at, else the test cluster booted (as root) for this benchmark and stopped
    after it, daemons and folder."""
    if os.environ.get("SLURM_CONF"):
        yield
        return
    sys.path.insert(0, str(REPO))
    from orchestrator import devcluster

    booted = devcluster.up(Path(tempfile.mkdtemp(prefix="bench-slurm-")))
    os.environ.update(booted.env())
    try:
        yield
    finally:
        devcluster.down(booted.workdir)
        shutil.rmtree(booted.workdir, ignore_errors=True)
        os.environ.pop("SLURM_CONF", None)


@contextlib.contextmanager
def workspace(text: str, name: str = "bench.yaml") -> Iterator[tuple[Path, Path]]:
    """The cluster up, a throwaway PIPELINE_HOME, and the benchmark's spec written: (folder, spec path)."""
    with cluster(), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["PIPELINE_HOME"] = str(work / "home")
        spec = work / name
        spec.write_text(text)
        yield work, spec


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    with workspace(SPEC) as (work, spec):
        rows = []
        for _ in range(args.repeat):
            raw_s, raw_ids = raw_chain(work)
            pipe_s, pipe_ids = pipeline_chain(spec)
            rows.append({"raw_submit_s": raw_s, "pipeline_submit_s": pipe_s,
                         "raw_makespan_s": makespan(raw_ids), "pipeline_makespan_s": makespan(pipe_ids)})
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        report = {
            "repeats": args.repeat,
            "pipeline_submit_s": round(med["pipeline_submit_s"], 3),
            "raw_sbatch_loop_s": round(med["raw_submit_s"], 3),
            "makespan_ratio": round(med["pipeline_makespan_s"] / med["raw_makespan_s"], 3),
            "pipeline_makespan_s": round(med["pipeline_makespan_s"], 1),
            "raw_makespan_s": round(med["raw_makespan_s"], 1),
            **status_rpcs(spec, args.runs),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
