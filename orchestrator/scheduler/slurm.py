"""Slurm backend: submitit's SlurmExecutor submits, one batched sacct (squeue without accounting) queries.

Every stage is submitted up front with --dependency=afterok:<parents> and --kill-on-invalid-dep=yes, so a
failed stage's dependents are cancelled by Slurm at once instead of lingering in DependencyNeverSatisfied
(sbatch(1), --kill-on-invalid-dep). Jobs go in held and are released together, which closes the race where a
parent ends before its child is registered (easybuild-framework PR #751).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import proc
from orchestrator.errors import CommandError, SchedulerError
from orchestrator.scheduler.slurm_job import run_stage
from orchestrator.scheduler.slurm_parse import (  # parsing and combining what sacct/squeue print
    Usage,
    _may_need_a_node,
    _note_nodes,
    combine,
    expand_array_ids,  # noqa: F401  (re-exported for tests)
    parse_bad_nodes,
    parse_max_array_size,
    parse_sacct,
    parse_squeue,
    parse_usage,
)
from orchestrator.scheduler.slurm_reasons import explained
from orchestrator.scheduler.slurm_submit import (  # submitit's parameters and executor, pickle repair
    array_id,
    executor_for,
    job_name,
    parameters,
    repair,
    submitting,
)
from orchestrator.scheduler.types import (
    ACCOUNTED_AS,  # noqa: F401  (tests and older callers import the JobInfo.extra keys from here)
    CONTROLLER_DOWN,
    DEFAULT_MAX_ARRAY_SIZE,
    DISAGREEMENT,  # noqa: F401
    NODE_PROBLEM,  # noqa: F401
    AccountingUnavailable,
    ArrayRequest,
    JobInfo,
    SubmitRequest,
)
from orchestrator.spec import ClusterProfile
from orchestrator.state import RunPaths

# Restarts is not a sacct field on 22.05; the restart count comes from the job-written records.
# JobID, not JobIDRaw: an array task is `<array id>_<task>` there (JobIDRaw is each task's own number), the id
# sbatch --parsable gave and the one our state records; for a plain job both are the same.
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Start,End,Reason"
# squeue(1) -O "type[:[.][size][suffix]]": after the colon a missing size is 0, printed whole, neither padded nor
# cut (SchedMD/slurm src/squeue/opts.c _parse_long_token; seen on the 22.05 test cluster); "|" is the suffix.
# -O because the restart count has no -o letter: a requeue the controller has done and slurmdbd has not recorded
# yet is told apart from a controller that reloaded an older state (slurm_parse.combine). EndTime is read only for
# an ended job (before, it is the expected end): a job slurmdbd has not heard end of still gets its end time.
# JobArrayID prints `123_4` as -o %i does; with -r (--array) one line per array task, never `123_[0-7]`.
SQUEUE_FIELDS = "JobArrayID:|,State:|,Reason:|,NodeList:|,StartTime:|,RestartCnt:|,EndTime:"
USAGE_FIELDS = "JobID,ElapsedRaw,NNodes,AllocTRES,TotalCPU,CPUTimeRAW,MaxRSS"
QUERY_TIMEOUT_S = 30.0


class SlurmScheduler:
    kind = "slurm"

    def __init__(self, run_dir: Path | None, cluster: ClusterProfile) -> None:
        self.run_dir = run_dir
        self.cluster = cluster
        self.query_calls = 0  # RPCs made by query(); asserted by tests and the benchmark
        self._max_array: int | None = None

    def submit(self, request: SubmitRequest) -> str:
        executor = self._executor_for(request.run_dir, request.stage)
        executor.update_parameters(**self._parameters(request))
        jobs = submitting(request.run_dir, request.stage,
                                lambda: [executor.submit(run_stage, str(request.run_dir), request.stage)])
        return str(jobs[0].job_id)

    def submit_array(self, request: ArrayRequest) -> list[str]:
        """One sbatch --array through submitit's map_array (submitit 1.5.4 slurm/slurm.py
        SlurmExecutor._internal_process_submissions: one pickle per task, moved to submitit/<A>_<i>/ once sbatch
        answered; the task finds its own by SLURM_ARRAY_JOB_ID/SLURM_ARRAY_TASK_ID, and so runs tasks[i])."""
        if len(request.tasks) < 2:
            raise SchedulerError("a job array needs two tasks or more; submit a single stage as a job")
        executor = self._executor_for(request.run_dir, request.stage)
        single = SubmitRequest(request.run_dir, request.run_id, request.stage, request.resources, request.after,
                               request.hold, request.retries)
        params = self._parameters(single)
        dependency = [str(params.pop("dependency"))] if "dependency" in params else []
        dependency += [f"aftercorr:{array_id(ids, len(request.tasks))}" for ids in request.corr]
        if dependency:
            params["dependency"] = ",".join(dependency)  # comma: every one of them must hold (sbatch(1))
        # submitit writes --array=0-(n-1)%min(n, array_parallelism) (slurm.py _make_sbatch_string)
        params["array_parallelism"] = request.throttle or len(request.tasks)
        executor.update_parameters(**params)
        n = len(request.tasks)
        jobs = submitting(request.run_dir, request.stage,
                                lambda: executor.map_array(run_stage, [str(request.run_dir)] * n, list(request.tasks)))
        return [str(job.job_id) for job in jobs]

    def max_array_size(self) -> int:
        """MaxArraySize from `scontrol show config`, asked once per scheduler (one per submit)."""
        if self._max_array is None:
            out = proc.run(["scontrol", "show", "config"], timeout=QUERY_TIMEOUT_S, check=False)
            self._max_array = parse_max_array_size(out.stdout) if out.returncode == 0 else DEFAULT_MAX_ARRAY_SIZE
        return self._max_array

    def _parameters(self, request: SubmitRequest) -> dict[str, object]:
        return parameters(request)

    def _executor_for(self, run_dir: Path, stage: str) -> Any:
        return executor_for(run_dir, self.cluster.python or sys.executable, stage)

    def repair(self, run_dir: Path, stage: str, job_id: str) -> tuple[bool, str | None]:
        """Move a job's submitit pickle where the job looks for it (slurm_submit.repair)."""
        return repair(run_dir, stage, job_id)

    def release(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        # A held array is released whole (`scontrol release 123`), not task by task: naming a task splits it off
        # the array's one pending record. Our arrays are submitted for one run and released together.
        ids = list(dict.fromkeys(j.partition("_")[0] for j in job_ids))
        out = proc.run(["scontrol", "release", ",".join(ids)], timeout=QUERY_TIMEOUT_S, check=False)
        # Releasing a job that is not held (or already ended) is what we want anyway; anything else is not.
        harmless = ("not held", "already completed", "invalid job id", "job has already finished",
                    "error: no error")  # 22.05 prints "slurm_suspend error: No error" for a running job
        problems = [l for l in out.stderr.splitlines() if l.strip() and not any(h in l.lower() for h in harmless)]
        if out.returncode != 0 and problems:
            raise SchedulerError(f"scontrol release failed: {'; '.join(problems)}",
                                 "the jobs stay held; `pipeline submit --resume RUN` retries the release")

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            # scancel of an already-finished job prints an error but is harmless: idempotent by contract.
            proc.run(["scancel", *job_ids], check=False, timeout=QUERY_TIMEOUT_S)

    def find_tagged(self, run_dir: Path, run_id: str, stages: Sequence[str]) -> dict[str, list[str]]:
        names = {job_name(run_id, s): s for s in stages}
        if not names:
            return {}
        found: dict[str, set[str]] = {}
        out = proc.run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%j", "--name", ",".join(names)],
                       timeout=QUERY_TIMEOUT_S).stdout
        if self.cluster.accounting != "off":
            acct = proc.run(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName", "-S", "now-7days",
                             "--name", ",".join(names)], timeout=QUERY_TIMEOUT_S, check=False)
            out += acct.stdout if acct.returncode == 0 else ""
        for line in out.splitlines():
            job_id, _, name = line.partition("|")
            # `123` or an array task `123_4` (squeue -r prints one line per task); sacct's `123_[0-3]` of a
            # pending array is skipped, squeue has its tasks one by one
            if name in names and job_id.replace("_", "", 1).isdigit():
                found.setdefault(names[name], set()).add(job_id)
        return {stage: sorted(ids, key=_submission_order) for stage, ids in found.items()}

    def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Each job's state, with a note saying what its Slurm reason means (slurm_reasons.py)."""
        try:
            found = self._query(job_ids)
        except AccountingUnavailable as exc:
            exc.found = {j: explained(i, j) for j, i in exc.found.items()}
            raise
        return {j: explained(i, j) for j, i in found.items()}

    def _query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """One sacct call for every id; squeue when the cluster has no accounting (torchx PR #1070)."""
        if not job_ids:
            return {}
        if self.cluster.accounting != "off":
            try:
                found = self._sacct(job_ids)
            except SchedulerError as exc:
                # slurmdbd or its database is down: the controller still knows every live job, and the jobs'
                # records know how finished ones ended. UNKNOWN for all would stop rerun and mislead cancel.
                raise AccountingUnavailable(self._squeue(job_ids), _first_error(exc.message)) from None
            if found is not None:
                # One squeue for the same ids: the controller knows jobs slurmdbd has not heard of yet, requeued
                # ones (NODE_FAIL/PREEMPTED in accounting, pending again with --requeue), holds, and a job that a
                # controller restarted from an older state save runs again (issue 13 item 4).
                try:
                    live = self._squeue(job_ids)
                except SchedulerError as exc:  # slurmctld down (killed, restarting): accounting still answers
                    return {j: dataclasses.replace(i, extra={**i.extra, CONTROLLER_DOWN: _first_error(exc.message)})
                            for j, i in found.items()}
                return self._with_node_problems(combine(job_ids, found, live))
            if self.cluster.accounting == "on":
                raise AccountingUnavailable(self._squeue(job_ids), "accounting storage is disabled in slurm.conf "
                                            "although the cluster profile says accounting: on")
        return self._with_node_problems(self._squeue(job_ids))

    def _with_node_problems(self, found: dict[str, JobInfo]) -> dict[str, JobInfo]:
        """Name the drained/down node a held, stuck or disputed job is on or waits for, with Slurm's reason: one
        sinfo call, made only when such a job exists (a chain waiting on its dependencies costs nothing)."""
        if not any(_may_need_a_node(info) for info in found.values()):
            return found
        self.query_calls += 1
        out = proc.run(["sinfo", "-h", "-N", "-o", "%N|%T|%E"], timeout=QUERY_TIMEOUT_S, check=False)
        bad = parse_bad_nodes(out.stdout) if out.returncode == 0 else {}
        return {j: _note_nodes(info, bad) if _may_need_a_node(info) else info for j, info in found.items()}

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, JobInfo] | None:
        # -X: allocations only (no .batch/.extern steps); -j implies an Epoch start time, so no midnight
        # window (snakemake#1227).
        self.query_calls += 1
        try:
            out = proc.run(["sacct", "-X", "-D", "-n", "-P", "-o", SACCT_FIELDS, "-j", ",".join(job_ids)],
                           timeout=QUERY_TIMEOUT_S)
        except CommandError as exc:
            if "accounting storage is disabled" in (exc.stderr + exc.stdout).lower():
                return None
            raise SchedulerError(f"sacct failed: {exc.message}", "status is unknown until sacct answers") from None
        return parse_sacct(out.stdout)

    def _squeue(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        if not job_ids:
            return {}
        self.query_calls += 1
        try:
            out = proc.run(["squeue", "-h", "-r", "--states=all", "-O", SQUEUE_FIELDS, "-j", ",".join(job_ids)],
                           timeout=QUERY_TIMEOUT_S, check=False)
        except Exception as exc:
            raise SchedulerError(f"squeue failed: {exc}") from None
        # squeue exits 1 with "Invalid job id specified" when every id has aged out (MinJobAge): not a failure.
        if out.returncode != 0 and "invalid job id" not in out.stderr.lower():
            raise SchedulerError(f"squeue failed: {out.stderr.strip()}")
        return parse_squeue(out.stdout)


    def usage(self, job_ids: Sequence[str]) -> dict[str, Usage]:
        """What each job used, for `pipeline report`: one sacct call with the job steps (MaxRSS is per step)."""
        if not job_ids:
            return {}
        self.query_calls += 1
        out = proc.run(["sacct", "-n", "-P", "-o", USAGE_FIELDS, "-j", ",".join(job_ids)], timeout=QUERY_TIMEOUT_S,
                       hint="the report's resource table needs Slurm accounting (slurmdbd)")
        return parse_usage(out.stdout)


def _submission_order(job_id: str) -> tuple[int, int]:
    """`123` -> (123, -1), `123_4` -> (123, 4): oldest first, an array's tasks in task order."""
    job, _, task = job_id.partition("_")
    return int(job), int(task) if task else -1


def _first_error(message: str) -> str:
    """The last `error:` line of a failed command's message (sacct prints three for one cause)."""
    errors = [l.split("error:", 1)[1].strip() for l in message.splitlines() if "error:" in l]
    return errors[-1] if errors else message.splitlines()[0][:200]


def query_group(run_dir: Path) -> str:
    """Runs on one cluster's accounting are queried together: one sacct call for all of them."""
    cluster = ClusterProfile.model_validate(RunPaths(run_dir).plan_json()["cluster"])
    return "slurm:" + cluster.accounting
