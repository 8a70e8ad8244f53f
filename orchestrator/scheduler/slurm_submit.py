"""How the Slurm backend hands a job to sbatch through submitit: the executor parameters (every resource flag from
orchestrator/sbatch.py), the executor with its test-only fault point, the submitter's environment with secrets
stripped, the job-name tag, aftercorr's array id, and repair of a job whose submitit pickle a killed submit
left under its temporary name. orchestrator/scheduler/slurm.py's SlurmScheduler calls these.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import sbatch
from orchestrator.errors import SchedulerError
from orchestrator.scheduler.types import SubmitRequest
from orchestrator.secrets import job_env
from orchestrator.state import RunPaths, faultpoint


def job_name(run_id: str, stage: str) -> str:
    """The tag that lets orphans be found by name (squeue/sacct --name) after any crash."""
    return f"{run_id}.{stage}"


# Options submitit takes as executor parameters (submitit 1.5.4 slurm.py _make_sbatch_string); the rest of the
# resource flags go in additional_parameters. Both end up as `#SBATCH --<name>=<value>` lines.
SUBMITIT_NATIVE = frozenset({"nodes", "ntasks-per-node", "cpus-per-task", "gpus-per-node", "gres", "mem", "partition",
                             "constraint", "account", "qos", "exclusive"})


def parameters(request: SubmitRequest) -> dict[str, object]:
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


def executor_for(run_dir: Path, python: str, stage: str) -> Any:
    """The executor that submits one stage's job (its files under the run's submitit/ folder)."""
    executor = _executor(RunPaths(run_dir).submitit / "%j", python, stage)
    # submitit spaces sbatch calls 0.2 s apart for large sweeps; a chain is a handful of jobs and the
    # submit-in-one-second target matters more (peers.md section 8, "Throughput and latency").
    executor._throttling = 0.0
    return executor


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


def submitting(run_dir: Path, stage: str, call: Any) -> list[Any]:
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


def repair(run_dir: Path, stage: str, job_id: str) -> tuple[bool, str | None]:
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


def array_id(task_ids: Sequence[str], tasks: int) -> str:
    """The array job id of task ids `A_0 .. A_(n-1)`; anything else cannot be paired task by task (aftercorr)."""
    base = task_ids[0].partition("_")[0] if task_ids else ""
    if list(task_ids) != [f"{base}_{i}" for i in range(tasks)]:
        raise SchedulerError(f"aftercorr needs a parent array of the same {tasks} tasks, got {', '.join(task_ids)}")
    return base
