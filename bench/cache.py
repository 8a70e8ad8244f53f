"""Benchmark: the work the stage cache saves (issue 14 item 7). A 7-stage chain shaped like seed 001 (env,
download, compile, finetune on 2 nodes, merge, evaluate, inference; `sleep` stands in for the work, each stage
declaring its outputs), run once; then one learning rate changes and the chain is submitted twice more:
  full rerun:  `pipeline submit --no-cache --set stages.finetune.params.lr=A` (what submit did before the cache)
  cached:      `pipeline submit --set stages.finetune.params.lr=B` (download, env, compile reused)
Different values, so the cached submit cannot reuse the full rerun's finetune. Reports, for each: jobs
submitted, node-seconds (sacct ElapsedRaw x NNodes over the run's jobs), makespan and submit wall time, and the
ratios cached / full.

Run on the test cluster (boots one if SLURM_CONF is unset, as root):
    flock /tmp/pipeline-slurm.lock .venv/bin/python bench/cache.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit_chain import PIPELINE, REPO, accounted, sh, span_s, workspace  # noqa: E402  (the sibling bench's cluster helpers)

WORK_S = {"create_env": 4, "download": 6, "compile": 8, "finetune": 5, "merge": 2, "evaluate": 2, "inference": 1}
SPEC = """name: cachebench
cluster: {name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:05:00"}}
stages:
  - {name: create_env, kind: command, run: "sleep %(create_env)d; mkdir -p env && echo pins > env/pins",
     outputs: [env/pins]}
  - {name: download, kind: command, run: "sleep %(download)d; mkdir -p model && echo w > model/config.json",
     outputs: [model/config.json]}
  - {name: compile, kind: command, run: "sleep %(compile)d; mkdir -p neff && echo g > neff/graph", outputs: [neff/graph]}
  - name: finetune
    kind: command
    params: {lr: 0.0001}
    resources: {nodes: 2}
    run: "sleep %(finetune)d; mkdir -p ckpt && echo $PARAM_LR > ckpt/adapter"
    outputs: [ckpt/adapter]
  - {name: merge, kind: command, run: "sleep %(merge)d; mkdir -p merged && cp ckpt/adapter merged/model",
     outputs: [merged/model]}
  - {name: evaluate, kind: command, run: "sleep %(evaluate)d; mkdir -p reports && echo ok > reports/evaluate.json",
     outputs: [reports/evaluate.json]}
  - {name: inference, kind: command, run: "sleep %(inference)d; mkdir -p reports && echo hi > reports/inference.json",
     outputs: [reports/inference.json], cache: false}
""" % WORK_S


def submit_and_wait(spec: Path, *flags: str) -> dict[str, Any]:
    start = time.perf_counter()
    run_id = sh([*PIPELINE, "submit", str(spec), *flags], cwd=REPO).strip().splitlines()[-1]
    submit_s = time.perf_counter() - start
    deadline = time.time() + 600
    while True:
        data = json.loads(sh([*PIPELINE, "status", run_id, "--json"], cwd=REPO))
        states = [s["attempts"][-1]["state"] for s in data["stages"].values()]
        if all(s in ("COMPLETED", "CACHED") for s in states):
            break
        if any(s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") for s in states):
            raise SystemExit(f"benchmark run {run_id} failed: {states}")
        if time.time() > deadline:
            raise SystemExit(f"benchmark run {run_id} did not finish: {states}")
        time.sleep(1)
    jobs = [a["job_id"] for s in data["stages"].values() for a in s["attempts"] if not a.get("cached_from")]
    return {"run_id": run_id, "submit_s": round(submit_s, 3), "jobs_submitted": len(jobs),
            "cached_stages": sum(s == "CACHED" for s in states), **usage(jobs)}


def usage(job_ids: list[str]) -> dict[str, float]:
    """Node-seconds (ElapsedRaw x NNodes) and makespan of the jobs, from sacct."""
    if not job_ids:
        return {"node_seconds": 0.0, "makespan_s": 0.0}
    rows = accounted(job_ids)
    return {"node_seconds": float(sum(int(r["ElapsedRaw"]) * int(r["NNodes"]) for r in rows)),
            "makespan_s": span_s(rows)}


def main() -> int:
    with workspace(SPEC) as (_, spec):
        first = submit_and_wait(spec)
        full = submit_and_wait(spec, "--no-cache", "--set", "stages.finetune.params.lr=0.0002")
        cached = submit_and_wait(spec, "--set", "stages.finetune.params.lr=0.0003")
    report = {
        "stages": len(WORK_S), "first_run": first, "full_rerun": full, "cached_rerun": cached,
        "jobs_ratio": round(cached["jobs_submitted"] / full["jobs_submitted"], 3),
        "node_seconds_ratio": round(cached["node_seconds"] / full["node_seconds"], 3),
        "makespan_ratio": round(cached["makespan_s"] / full["makespan_s"], 3),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
