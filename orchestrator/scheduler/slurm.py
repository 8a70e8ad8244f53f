"""Slurm backend: submitit's SlurmExecutor submits, one batched sacct (squeue without accounting) queries.

Every stage is submitted up front with --dependency=afterok:<parents> and --kill-on-invalid-dep=yes, so a
failed stage's dependents are cancelled by Slurm at once instead of lingering in DependencyNeverSatisfied
(sbatch(1), --kill-on-invalid-dep). Jobs go in held and are released together, which closes the race where a
parent ends before its child is registered (easybuild-framework PR #751).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import proc, sbatch
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
from orchestrator.secrets import job_env
from orchestrator.spec import ClusterProfile
from orchestrator.state import RunPaths, faultpoint

# Restarts is not a sacct field on 22.05; the restart count comes from the job-written records.
# JobID, not JobIDRaw: an array task is `<array id>_<task>` there (JobIDRaw is each task's own number), the id
# sbatch --parsable gave and the one our state records; for a plain job both are the same.
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Start,End,Reason"
SQUEUE_FORMAT = "%i|%T|%r|%N|%S"  # with -r (--array): one line per array task, `123_4`, never `123_[0-7]`
USAGE_FIELDS = "JobID,ElapsedRaw,NNodes,AllocTRES,TotalCPU,CPUTimeRAW,MaxRSS"
QUERY_TIMEOUT_S = 30.0


def job_name(run_id: str, stage: str) -> str:
    """The tag that lets orphans be found by name (squeue/sacct --name) after any crash."""
    return f"{run_id}.{stage}"


# Options submitit takes as executor parameters (submitit 1.5.4 slurm.py _make_sbatch_string); the rest of the
# resource flags go in additional_parameters. Both end up as `#SBATCH --<name>=<value>` lines.
SUBMITIT_NATIVE = frozenset({"nodes", "ntasks-per-node", "cpus-per-task", "gpus-per-node", "gres", "mem", "partition",
                             "constraint", "account", "qos", "exclusive"})


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
        jobs = self._submitting(request.run_dir, request.stage,
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
        jobs = self._submitting(request.run_dir, request.stage,
                                lambda: executor.map_array(run_stage, [str(request.run_dir)] * n, list(request.tasks)))
        return [str(job.job_id) for job in jobs]

    def max_array_size(self) -> int:
        """MaxArraySize from `scontrol show config`, asked once per scheduler (one per submit)."""
        if self._max_array is None:
            out = proc.run(["scontrol", "show", "config"], timeout=QUERY_TIMEOUT_S, check=False)
            self._max_array = parse_max_array_size(out.stdout) if out.returncode == 0 else DEFAULT_MAX_ARRAY_SIZE
        return self._max_array

    def _executor_for(self, run_dir: Path, stage: str) -> Any:
        executor = _executor(RunPaths(run_dir).submitit / "%j", self.cluster.python or sys.executable, stage)
        # submitit spaces sbatch calls 0.2 s apart for large sweeps; a chain is a handful of jobs and the
        # submit-in-one-second target matters more (peers.md section 8, "Throughput and latency").
        executor._throttling = 0.0
        return executor

    def _submitting(self, run_dir: Path, stage: str, call: Any) -> list[Any]:
        env_before = dict(os.environ)
        # The submitter's environment goes to the job (sbatch --export=ALL): strip secrets first.
        os.environ.clear()
        os.environ.update(job_env(run_dir, env_before))
        try:
            jobs: list[Any] = call()
        except Exception as exc:  # submitit raises FailedJobError or subprocess errors; both mean "not queued"
            raise SchedulerError(f"sbatch refused stage {stage}: {exc}",
                                 "fix the cause, then `pipeline submit --resume RUN` finishes the submission") from None
        finally:
            os.environ.clear()
            os.environ.update(env_before)
        return jobs

    def _parameters(self, request: SubmitRequest) -> dict[str, object]:
        """submitit's executor parameters; every resource flag comes from sbatch.options."""
        res = request.resources
        extra: dict[str, object] = {"kill-on-invalid-dep": "yes", "comment": f"pipeline:{request.run_id}:{request.stage}"}
        if request.hold:
            extra["hold"] = True
        if request.retries:
            extra["requeue"] = True
        params: dict[str, object] = {
            "job_name": job_name(request.run_id, request.stage), "use_srun": False, "stderr_to_stdout": True,
            "time": None, "nodes": 1, "additional_parameters": extra, "signal_delay_s": 120,
        }
        for key, value in sbatch.options(res):  # the flags `pipeline render` shows, as submitit takes them
            native = key in SUBMITIT_NATIVE and key not in res.sbatch
            (params if native else extra)[key.replace("-", "_") if native else key] = value
        if request.after:
            params["dependency"] = "afterok:" + ":".join(request.after)
        return params

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

    def repair(self, run_dir: Path, stage: str, job_id: str) -> tuple[bool, str | None]:
        """submitit runs sbatch, then moves the job's pickle from submitit/<uuid>.pkl to
        submitit/<id>/<id>_submitted.pkl (submitit 1.5.4 core/core.py Executor._internal_process_submissions,
        utils.JobPaths.move_temporary_file). A submit killed between the two leaves a job that waits 60 s for a
        pickle that never comes, or exits 0:53 when submitit/<id>/ (its --output folder) is missing. The pickle
        is still on disk under its temporary name: find the one whose arguments are this run and stage, and
        move it where the job looks."""
        import submitit

        folder = RunPaths(run_dir).submitit
        paths = submitit.core.utils.JobPaths(folder / "%j", job_id=job_id)
        if paths.submitted_pickle.exists():
            return True, None
        for candidate in sorted(folder.glob("*.pkl")):
            try:
                delayed = submitit.core.utils.DelayedSubmission.load(candidate)
            except Exception:  # a torn pickle (killed mid-dump) or someone else's file: not this job's
                continue
            if tuple(delayed.args) == (str(run_dir), stage):
                paths.move_temporary_file(candidate, "submitted_pickle")
                return True, f"moved its submitit pickle from {candidate.name} into submitit/{job_id}/"
        return False, f"its submitit pickle ({paths.submitted_pickle.name}) is missing and no copy was left"

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
            if name in names and job_id.replace("_", "", 1).isdigit():
                found.setdefault(names[name], set()).add(job_id)
        return {stage: sorted(ids, key=int) for stage, ids in found.items()}

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
            out = proc.run(["squeue", "-h", "-r", "--states=all", "-o", SQUEUE_FORMAT, "-j", ",".join(job_ids)],
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


def _first_error(message: str) -> str:
    """The last `error:` line of a failed command's message (sacct prints three for one cause)."""
    errors = [l.split("error:", 1)[1].strip() for l in message.splitlines() if "error:" in l]
    return errors[-1] if errors else message.splitlines()[0][:200]


def _executor(folder: Path, python: str, stage: str) -> Any:
    """submitit's SlurmExecutor with a test-only fault point right after sbatch accepted the job and before
    submitit moves the job's pickle into place (orchestrator.state.faultpoint; issue 13 item 1)."""
    import submitit  # imported here: render/validate must not need a cluster (style.md practice 3)

    class Executor(submitit.SlurmExecutor):
        def _submit_command(self, command: str) -> Any:
            job = super()._submit_command(command)
            faultpoint("sbatch-accepted", stage)
            return job

    return Executor(folder=folder, python=python, max_num_timeout=0)


def array_id(task_ids: Sequence[str], tasks: int) -> str:
    """The array job id of task ids `A_0 .. A_(n-1)`; anything else cannot be paired task by task (aftercorr)."""
    base = task_ids[0].partition("_")[0] if task_ids else ""
    if list(task_ids) != [f"{base}_{i}" for i in range(tasks)]:
        raise SchedulerError(f"aftercorr needs a parent array of the same {tasks} tasks, got {', '.join(task_ids)}")
    return base


def query_group(run_dir: Path) -> str:
    """Runs on one cluster's accounting are queried together: one sacct call for all of them."""
    cluster = ClusterProfile.model_validate(RunPaths(run_dir).plan_json()["cluster"])
    return "slurm:" + cluster.accounting
