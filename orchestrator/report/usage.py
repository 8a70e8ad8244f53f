"""The report's resource and cost table: per stage, elapsed time, nodes, node- and accelerator-hours, CPU
efficiency, peak memory and cost, from one batched sacct call on Slurm, else from the job wrapper's records."""

from __future__ import annotations

import os
from typing import Any

from orchestrator import status
from orchestrator.errors import PipelineError
from orchestrator.jobfiles import job_records
from orchestrator.report.model import Report, StageUse
from orchestrator.scheduler.slurm import SlurmScheduler
from orchestrator.scheduler.slurm_parse import Usage
from orchestrator.spec import ClusterProfile
from orchestrator.state import Attempt, RunPaths


def resource_table(rep: Report, plan: dict[str, Any], stages: dict[str, Any], paths: RunPaths) -> list[StageUse]:
    cluster = ClusterProfile.model_validate(plan["cluster"])
    ids = [a.job_id for s in stages.values() for a in s.attempts if a.cached_from is None]  # CACHED: no job
    acct: dict[str, Usage] = {}
    if cluster.scheduler == "slurm" and cluster.accounting != "off":
        try:
            acct = SlurmScheduler(paths.root, cluster).usage(ids)
        except PipelineError as exc:
            rep.notes.append(f"sacct gave no usage ({exc.message}); elapsed from the job records only")
    price = _price(plan["cluster"])
    resources = {s["name"]: s["resources"] for s in plan["stages"]}
    return [_stage_use(name, stage.attempts, acct, resources.get(name, {}), paths, price, plan["cluster"])
            for name, stage in stages.items() if stage.attempts]


def _price(cluster: dict[str, Any]) -> float | None:
    prices: dict[str, float] = cluster.get("node_hour_price") or {}
    value = prices.get(cluster.get("instance_type") or "", prices.get("default"))
    return float(value) if value is not None else None


def _accel_per_node(res: dict[str, Any], tres: dict[str, str], nodes: int, cluster: dict[str, Any]) -> float:
    """GPUs or NeuronCores the job held per node: sacct's TRES, else the stage's request, else a Trainium
    profile's NeuronCores (those nodes run one job each)."""
    for key in ("gres/gpu", "gres/neuron", "gres/neuroncore"):
        if tres.get(key, "").isdigit():
            return int(tres[key]) / max(1, nodes)
    if res.get("gpus_per_node"):
        return float(res["gpus_per_node"])
    accel = cluster.get("accelerator") or {}
    return float(accel.get("per_node", 0)) if accel.get("kind") == "neuron" else 0.0


def _stage_use(name: str, attempts: list[Attempt], acct: dict[str, Usage], res: dict[str, Any], paths: RunPaths,
               price: float | None, cluster: dict[str, Any]) -> StageUse:
    elapsed = node_h = accel_h = cpu = held = 0.0
    nodes, rss = 0, None
    for attempt in attempts:
        secs, n, per_node, used_cpu, held_cpu, max_rss = _attempt_use(
            acct.get(attempt.job_id), job_records(paths, name, attempt.job_id), res, cluster)
        elapsed, cpu, held = elapsed + secs, cpu + used_cpu, held + held_cpu
        nodes = max(nodes, n)
        node_h += secs * n / 3600
        accel_h += secs * n * per_node / 3600
        rss = max(rss or 0, max_rss) if max_rss is not None else rss
    return StageUse(name, len(attempts), elapsed, nodes, node_h, accel_h, cpu / held if held else None, rss,
                    node_h * price if price is not None else None)


def _attempt_use(used: Usage | None, records: list[dict[str, Any]], res: dict[str, Any],
                 cluster: dict[str, Any]) -> tuple[float, int, float, float, float, int | None]:
    """(seconds, nodes, accelerators per node, CPU seconds used, CPU seconds held, max RSS) of one attempt:
    sacct's numbers where it has them; else the job wrapper's records (its getrusage covers the processes of
    the batch step's node, so on several nodes CPU and RSS there are the first node's)."""
    secs = float(used.elapsed_s) if used else sum(_duration(r) for r in records)
    n = max(1, used.nodes) if used else int(res.get("nodes") or 1)
    per_node = _accel_per_node(res, used.alloc_tres if used else {}, n, cluster)
    if used and used.total_cpu_s and used.cpu_time_s:
        cpu, held = used.total_cpu_s, float(used.cpu_time_s)
    else:
        cpu = sum(float(r.get("cpu_s", 0.0)) for r in records)
        cpus = int(used.alloc_tres.get("cpu", "0") or 0) if used else 0
        held = secs * (cpus or (os.cpu_count() or 1 if cluster.get("scheduler") == "local" else 0))
    kib = [int(r["max_rss_kib"]) for r in records if isinstance(r.get("max_rss_kib"), int)]
    rss = used.max_rss_bytes if used and used.max_rss_bytes else (max(kib) * 1024 if kib else None)
    return secs, n, per_node, cpu, held, rss


def _duration(record: dict[str, Any]) -> float:
    start, end = status.parse_time(record.get("start")), status.parse_time(record.get("end"))
    return max(0.0, (end - start).total_seconds()) if start and end else 0.0
