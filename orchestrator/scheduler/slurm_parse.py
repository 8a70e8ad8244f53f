"""Reading what Slurm says: sacct and squeue output, the two views combined into one answer per job (with the
disputes a controller restart leaves), node states, array task ids, sacct usage. No command runs here: the Slurm
backend (slurm.py) runs them and hands the text in, so all of this is tested on recorded output."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.scheduler.types import (
    ACCOUNTED_AS,
    CONTROLLER,
    DEFAULT_MAX_ARRAY_SIZE,
    DISAGREEMENT,
    NODE_PROBLEM,
    SOURCE,
    JobInfo,
)
from orchestrator.states import JobState, from_slurm, is_held

REQUEUABLE = frozenset({JobState.NODE_FAIL, JobState.PREEMPTED})


def parse_max_array_size(text: str) -> int:
    """`MaxArraySize = 1001` of `scontrol show config`: the most tasks of one array (indices 0..value-1)."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def expand_array_ids(job_id: str) -> list[str]:
    """`123_[0-2,5%2]` (a pending array's one record in sacct/squeue) -> 123_0 123_1 123_2 123_5; others as is."""
    match = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(%\d+)?\]", job_id)
    if not match:
        return [job_id]
    ids = []
    for part in match.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{match.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)] if lo.isdigit() else []
    return ids


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Rows of `sacct -X -D`: with -D (--duplicates) a requeued job has one row per run, oldest first (sacct(1));
    the last is the current run, the earlier ones are its restarts: state, end time and node of each."""
    result: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 7 or not parts[0]:
            continue
        record, state, exit_code, nodes, start, end, reason = parts[:7]
        code, _, sig = exit_code.partition(":")
        for job_id in expand_array_ids(record):
            earlier = result.get(job_id)
            history = earlier.history + (_run_summary(earlier),) if earlier is not None else ()
            result[job_id] = JobInfo(
                state=from_slurm(state),
                exit_code=_exit(code, sig),
                nodes=None if nodes in ("", "None assigned") else nodes,
                start=_ran_since(start, nodes), end=_time(end), reason=None if reason in ("", "None") else reason,
                restarts=len(history), history=history, extra={"raw_state": state},
            )
    return result


def _requeued(accounted: JobInfo | None, live: JobInfo) -> JobInfo:
    """The controller's view of a job accounting last saw end (NODE_FAIL, PREEMPTED, REQUEUED): it is queued again,
    so the run accounting shows is one more restart, not the job's end."""
    if accounted is None or not accounted.state.terminal and not accounted.extra.get("raw_state", "").startswith(
            "REQUEUE"):
        return live
    history = accounted.history + (_run_summary(accounted),)
    return dataclasses.replace(live, restarts=max(len(history), live.restarts), history=history)


def _run_summary(info: JobInfo) -> str:
    """One earlier run of a requeued job, e.g. 'NODE_FAIL at 2026-12-01T09:12:03 on dev2'."""
    raw = info.extra.get("raw_state", info.state.value).split(" ")[0].rstrip("+")
    return f"{raw} at {info.end or '?'}" + (f" on {info.nodes}" if info.nodes else "")


def parse_squeue(text: str) -> dict[str, JobInfo]:
    result: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        record, raw, reason, nodes, start = parts[:5]
        restarts = int(parts[5]) if len(parts) > 5 and parts[5].strip().isdigit() else 0
        why = None if reason in ("", "None") else reason
        state = JobState.HELD if is_held(from_slurm(raw), raw, why) else from_slurm(raw)
        end = _time(parts[6]) if len(parts) > 6 and state.terminal else None  # else EndTime is the expected end
        for job_id in expand_array_ids(record):
            result[job_id] = JobInfo(state=state, nodes=nodes or None, start=_ran_since(start, nodes), end=end,
                                     reason=why,
                                     restarts=restarts, extra={"raw_state": raw, SOURCE: CONTROLLER})
    return result


BAD_NODE_STATES = ("drain", "down", "fail", "maint", "not_responding")  # not "unknown": every node is, briefly,
# right after a controller restart until its slurmd registers again


def combine(job_ids: Sequence[str], accounted: dict[str, JobInfo], live: dict[str, JobInfo]) -> dict[str, JobInfo]:
    """Accounting (sacct -D) and the controller (squeue) for the same ids, each job's one answer.

    The controller is the present for a job it lists as pending, held or running: its state and reason win, with
    accounting's restart history. Where accounting says the job ended (not a requeue) but the controller runs or
    queues it again, or accounting says it is live but the controller has no such job, the answer carries a
    DISAGREEMENT note instead of silently trusting one: after `kill -9` of slurmctld it reloads its last state save
    and can run a finished job again or lose a newer one (slurm.conf StateSaveLocation; issue 13 item 4). A job the
    controller shows ended while accounting still says pending or running is slurmdbd catching up (it is updated
    asynchronously): the controller's answer stands (its EndTime; the exit code comes from accounting later, or
    from the job's own record), never a step back to pending. So is a job the controller has restarted more often
    than accounting knows (a node failure's requeue, seen under load in CI): the controller's answer stands, with
    the restarts accounting has recorded so far."""
    result: dict[str, JobInfo] = {}
    for job_id in job_ids:
        acct, ctld = accounted.get(job_id), live.get(job_id)
        if ctld is None or acct is None:
            info = acct or ctld
            if info is not None:
                result[job_id] = _lost(info) if ctld is None and info.state.active else info
            continue
        if acct.state.terminal and (ctld.state.terminal or ctld.extra.get("raw_state", "").startswith("COMPLETING")):
            result[job_id] = acct  # accounting has the exit code
        elif ctld.state.terminal:  # ended, and slurmdbd has not recorded the end (or even the start) yet
            result[job_id] = _present(ctld, acct)
        elif acct.state in REQUEUABLE or acct.extra.get("raw_state", "").startswith("REQUEUE"):
            result[job_id] = _requeued(acct, ctld)
        elif acct.state.terminal:
            again = dataclasses.replace(ctld, restarts=acct.restarts, history=acct.history)
            result[job_id] = _disputed(again, f"accounting says {_raw(acct)}" + (f" (ended {acct.end})" if acct.end
                                       else "") + f" but the controller shows it {ctld.state.value} again", acct)
        else:
            now = _present(ctld, acct)
            # A job goes back from running to pending only through a requeue, which raises the controller's restart
            # count at once and accounting's later: with the count unchanged, the controller's view is the older one.
            backwards = (acct.state is JobState.RUNNING and ctld.state is not JobState.RUNNING
                         and ctld.restarts <= acct.restarts)
            result[job_id] = _disputed(now, f"accounting says RUNNING but the controller shows it "
                                       f"{ctld.state.value}") if backwards else now
    return result


def _present(ctld: JobInfo, acct: JobInfo) -> JobInfo:
    """The controller's answer (the present), with the restarts, start and node accounting has recorded."""
    return dataclasses.replace(ctld, restarts=max(acct.restarts, ctld.restarts), history=acct.history,
                               nodes=ctld.nodes or acct.nodes, start=ctld.start or acct.start)


def _lost(acct: JobInfo) -> JobInfo:
    return _disputed(acct, f"accounting says {_raw(acct)} but the controller has no such job (lost in a controller "
                           "restart?); `sacctmgr show runawayjobs` lists and fixes such records")


def _disputed(info: JobInfo, why: str, accounted: JobInfo | None = None) -> JobInfo:
    extra = {**info.extra, DISAGREEMENT: why}
    if accounted is not None:
        extra[ACCOUNTED_AS] = _raw(accounted)
    return dataclasses.replace(info, extra=extra)


def _raw(info: JobInfo) -> str:
    return info.extra.get("raw_state", info.state.value).split(" ")[0].rstrip("+")


def _may_need_a_node(info: JobInfo) -> bool:
    """Held, disputed, or pending for a reason other than its dependencies or its place in the queue."""
    if info.state is JobState.HELD or DISAGREEMENT in info.extra:
        return True
    return info.state is JobState.PENDING and info.reason not in (None, "Dependency", "Priority", "BeginTime")


def parse_bad_nodes(text: str) -> dict[str, str]:
    """`sinfo -h -N -o %N|%T|%E` rows of drained/down nodes: node -> 'drained: Duplicate jobid'."""
    bad: dict[str, str] = {}
    for line in text.splitlines():
        node, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if node and any(word in state.lower() for word in BAD_NODE_STATES):
            bad[node] = state.rstrip("*~#$@+") + (f": {reason}" if reason and reason != "none" else "")
    return bad


def _note_nodes(info: JobInfo, bad: dict[str, str]) -> JobInfo:
    """The bad nodes the job is on (or last ran on); for a job with none, every bad node it may be waiting for."""
    mine = [n for n in expand_nodes(info.nodes or "") if n in bad]
    named = mine or ([] if info.nodes and info.state is not JobState.PENDING else sorted(bad))
    if not named:
        return info
    note = "; ".join(f"node {n} {bad[n]} (an admin's fix: scontrol update nodename={n} state=resume)" for n in named)
    return dataclasses.replace(info, extra={**info.extra, NODE_PROBLEM: note})


def expand_nodes(nodelist: str) -> list[str]:
    """'dev[1-3,5],gpu7' -> dev1 dev2 dev3 dev5 gpu7 (Slurm hostlist syntax, one bracket level)."""
    names: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            names.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            names += [f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi or lo) + 1)] if lo.isdigit() else []
    return names


@dataclass(frozen=True)
class Usage:
    """One job's accounting (sacct(1) fields): the allocation's elapsed time, nodes and TRES, the CPU time its
    steps used (TotalCPU) against what it held (CPUTimeRAW), and the largest step's MaxRSS."""

    elapsed_s: int
    nodes: int
    alloc_tres: dict[str, str]
    total_cpu_s: float
    cpu_time_s: int
    max_rss_bytes: int | None


def parse_usage(text: str) -> dict[str, Usage]:
    jobs: dict[str, dict[str, str]] = {}
    rss: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 7 or not parts[0]:
            continue
        job_id, step = parts[0].partition(".")[::2]
        if not step:
            jobs[job_id] = dict(zip(("elapsed", "nodes", "tres", "total_cpu", "cpu_time"), parts[1:6]))
        size = _bytes(parts[6])
        if size is not None:
            rss[job_id] = max(rss.get(job_id, 0), size)
    return {job_id: Usage(elapsed_s=_int(f["elapsed"]), nodes=_int(f["nodes"]),
                          alloc_tres=dict(kv.partition("=")[::2] for kv in f["tres"].split(",") if "=" in kv),
                          total_cpu_s=_duration_s(f["total_cpu"]), cpu_time_s=_int(f["cpu_time"]),
                          max_rss_bytes=rss.get(job_id))
            for job_id, f in jobs.items()}


def _int(value: str) -> int:
    return int(value) if value.isdigit() else 0


def _bytes(value: str) -> int | None:
    """sacct sizes: 1234K, 12.5M, 3G, or plain bytes."""
    match = re.fullmatch(r"([0-9.]+)([KMGTP]?)", value.strip())
    if not match:
        return None
    unit = match.group(2)
    return int(float(match.group(1)) * (1024 ** ("KMGTP".index(unit) + 1) if unit else 1))


def _duration_s(value: str) -> float:
    """sacct TotalCPU: [DD-][HH:]MM:SS[.sss]."""
    days, _, rest = value.rpartition("-")
    try:
        seconds = sum(float(part) * 60.0 ** i for i, part in enumerate(reversed(rest.split(":"))))
        return seconds + (int(days) * 86400 if days else 0)
    except ValueError:
        return 0.0


def _exit(code: str, sig: str) -> int | None:
    if not code.isdigit():
        return None
    if sig.isdigit() and int(sig):
        return 128 + int(sig)
    return int(code)


def _ran_since(start: str, nodes: str) -> str | None:
    """A start time only for a job that got an allocation. Before that, squeue's StartTime is the scheduler's
    expected start (squeue(1): "actual or expected"; backfill sets one for a queued job), and a job cancelled
    while queued gets its cancel time as Start in both squeue and sacct (seen on 22.05): neither ever ran."""
    return _time(start) if nodes not in ("", "None assigned") else None


def _time(value: str) -> str | None:
    return None if value in ("", "Unknown", "None", "N/A") else value
