"""Benchmark (issue 14 item 7): a 64-variant sweep of a 7-stage chain on the test cluster.

    .venv/bin/python bench/sweep.py [--variants 64]      (boots the test cluster if SLURM_CONF is unset, as root)

Reports, in one session so the ratio is fair on a noisy machine:
  - sbatch calls of `pipeline submit` (slurmctld's REQUEST_SUBMIT_BATCH_JOB count in sdiag; target <= 7, one per
    stage: the shared first stage is one job, each of the six per-variant stages one job array);
  - wall time of `pipeline submit` (interpreter start included; target <= 2 s);
  - makespan (first start -> last end, from sacct) against 64 independent raw 7-job afterok chains submitted by a
    bash loop of sbatch calls (bench/submit_chain.py raw_chain), as a ratio;
  - mean job run time (sacct ElapsedRaw, whole seconds) of ours and of the raw jobs: the difference is what our
    job wrapper (submitit's entry point + orchestrator/jobside.py) costs per task around the same `sleep 1`.
Every stage is `sleep 1`; s1 reads the swept value, so s1..s6 run per variant and s0 is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit_chain import PIPELINE, REPO, _count, makespan, raw_chain, sh, workspace


def spec_text(variants: int) -> str:
    values = ", ".join(str(i) for i in range(variants))
    stages = ['  - {name: s0, kind: command, run: "sleep 1"}\n',
              '  - {name: s1, kind: command, params: {variant: 0}, run: "sleep 1"}\n']
    stages += [f'  - {{name: s{i}, kind: command, run: "sleep 1"}}\n' for i in range(2, 7)]
    return ('name: bsweep\ncluster: {name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:05:00"}}\n'
            "stages:\n" + "".join(stages) + f"sweep:\n  grid:\n    stages.s1.params.variant: [{values}]\n")


def sbatch_rpcs() -> int:
    """Batch-job submissions slurmctld has served (one per sbatch call)."""
    return _count(sh(["sdiag"]), ("REQUEST_SUBMIT_BATCH_JOB",))


def mean_elapsed(job_ids: list[str]) -> float:
    rows = sh(["sacct", "-X", "-n", "-P", "-o", "ElapsedRaw", "-j", ",".join(job_ids)]).split()
    return sum(int(r) for r in rows) / len(rows)


def pipeline_sweep(spec: Path) -> tuple[float, int, list[str]]:
    before = sbatch_rpcs()
    start = time.perf_counter()
    run_id = sh([*PIPELINE, "submit", str(spec)], cwd=REPO).strip()
    elapsed = time.perf_counter() - start
    calls = sbatch_rpcs() - before
    data = json.loads(sh([*PIPELINE, "status", run_id, "--json"], cwd=REPO))
    return elapsed, calls, [s["attempts"][-1]["job_id"] for s in data["stages"].values()]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", type=int, default=64)
    args = parser.parse_args()
    with workspace(spec_text(args.variants), "sweep.yaml") as (work, spec):
        submit_s, calls, ids = pipeline_sweep(spec)
        ours = makespan(ids, timeout=1800)
        before = sbatch_rpcs()
        raw_s, raw_ids = raw_chain(work, chains=args.variants)
        raw_calls = sbatch_rpcs() - before
        raw = makespan(raw_ids, timeout=1800)
    report = {
        "variants": args.variants, "stages": 7,
        "pipeline_sbatch_calls": calls, "pipeline_jobs": len(ids), "pipeline_submit_s": round(submit_s, 3),
        "raw_sbatch_calls": raw_calls, "raw_jobs": len(raw_ids), "raw_sbatch_loop_s": round(raw_s, 3),
        "pipeline_makespan_s": round(ours, 1), "raw_makespan_s": round(raw, 1),
        "makespan_ratio": round(ours / raw, 3),
        "pipeline_mean_job_s": round(mean_elapsed(ids), 2), "raw_mean_job_s": round(mean_elapsed(raw_ids), 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
