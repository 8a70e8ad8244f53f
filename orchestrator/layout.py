"""The run directory's layout: every path inside one run, in one place. Nothing else assembles run paths.

    <run_root>/<run_id>/
      state.json  .state.lock  .run.lock      state (state.Store), its lock, the run lock of submit/rerun/cancel
      spec.yaml  spec.<n>.yaml                the spec as submitted, then one per `rerun --spec`
      plan.json  plans/plan.<n>.json          the plan as rendered (the newest), older plans kept by `rerun --spec`
      plans/scripts.<n>/                      ... with their scripts
      scripts/<stage>.sh                      the rendered stage scripts
      logs/<stage>.<job>.log                  each job's stdout+stderr
      records/<stage>/<job>.<restart>.json    the job wrapper's record of each (re)start
      records/<stage>/progress.json           advisory progress written by the stage program
      records/<stage>/metrics.<job>.jsonl     the attempt's metrics history
      records/<stage>/manifests/<job>.json    what a completed stage's outputs were (manifest.py, caching)
      records/.run-ended.<digest>             the run-end notification went out (notify.py)
      submitit/                               submitit's pickles and job files (Slurm backend)
      local/jobs/<n>.json  local/jobs.lock    the local backend's job table
      local/driver.lock  local/driver.log     the local backend's driver
      work/                                   the stages' outputs unless the pipeline sets `workdir:`
      torchtune/<stage>.yaml                  the torchtune config a stage ran with (written by its script)
      torchtune-freeze.txt  pip-freeze.txt  pip-freeze-finetune.txt   `pip freeze` of the envs the scripts built
      tensorboard/  wandb/                    trackers' offline folders
      report/                                 `pipeline report`'s default output

Scripts reach the run directory only through $PIPELINE_RUN_DIR (set by the job wrapper), never as a literal path:
a stage's cache key hashes its rendered script (fingerprint.py), so the script must read the same in every run.
`script_paths()` gives templates those run-independent expressions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_DIR_VAR = "$PIPELINE_RUN_DIR"
WORK = "work"
TUNE_CONFIGS = "torchtune"
FREEZES = {"torchtune": "torchtune-freeze.txt", "nxd": "pip-freeze.txt", "nxd_finetune": "pip-freeze-finetune.txt"}


def script_paths() -> dict[str, str]:
    """The run-directory paths the templates use, as shell text under $PIPELINE_RUN_DIR (unquoted: the template
    quotes it), for the render context's `paths`."""
    under = {"workdir": WORK, "tune_configs": TUNE_CONFIGS, **{f"freeze_{k}": v for k, v in FREEZES.items()}}
    return {"run_dir": RUN_DIR_VAR, **{k: f"{RUN_DIR_VAR}/{v}" for k, v in under.items()}}


def _safe(job_id: str) -> str:
    return job_id.replace("/", "_")


class RunPaths:
    """Every path inside one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def lock(self) -> Path:
        return self.root / ".state.lock"

    @property
    def run_lock(self) -> Path:
        """Held by submit, resume, rerun and cancel from their first state check to their last state write."""
        return self.root / ".run.lock"

    @property
    def spec_copy(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    def plan_json(self) -> dict[str, Any]:
        """plan.json as saved (the one place it is parsed; state.Store.read_plan() turns it into a Plan)."""
        data: dict[str, Any] = json.loads(self.plan.read_text(encoding="utf-8"))
        return data

    def spec_version(self, version: int) -> Path:
        """The spec a version of the run was planned from: spec.yaml first, then spec.<n>.yaml per `rerun --spec`."""
        return self.spec_copy if version <= 1 else self.root / f"spec.{version}.yaml"

    @property
    def plans(self) -> Path:
        return self.root / "plans"

    def plan_version(self, version: int) -> Path:
        """The plan of an older spec version, kept when `rerun --spec` replaces plan.json and scripts/."""
        return self.plans / f"plan.{version}.json"

    def scripts_version(self, version: int) -> Path:
        """The scripts/ of an older spec version, kept next to its plan."""
        return self.plans / f"scripts.{version}"

    def workdir(self, configured: str | None) -> Path:
        """Where the stages' outputs live: the pipeline's `workdir:`, else <run dir>/work."""
        return Path(configured) if configured else self.workdir_default

    @property
    def workdir_default(self) -> Path:
        return self.root / WORK

    @property
    def scripts(self) -> Path:
        return self.root / "scripts"

    def script(self, stage: str) -> Path:
        return self.scripts / f"{stage}.sh"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str, job_id: str) -> Path:
        return self.logs / f"{stage}.{_safe(job_id)}.log"

    @property
    def all_records(self) -> Path:
        return self.root / "records"

    def records(self, stage: str) -> Path:
        return self.all_records / stage

    def job_record(self, stage: str, job_id: str, restarts: int) -> Path:
        """The job wrapper's record of one (re)start of a job (jobside.py writes it, status and report read it)."""
        return self.records(stage) / f"{_safe(job_id)}.{restarts}.json"

    def job_records(self, stage: str, job_id: str) -> list[Path]:
        """Every record of a job, by restart count, oldest first."""
        found = self.records(stage).glob(f"{_safe(job_id)}.*.json")
        return sorted((p for p in found if p.stem.rsplit(".", 1)[-1].isdigit()),
                      key=lambda p: int(p.stem.rsplit(".", 1)[-1]))

    def manifest(self, stage: str, job_id: str) -> Path:
        """Written by the job wrapper when the stage completed with its outputs: what they were (cache.py)."""
        return self.records(stage) / "manifests" / f"{_safe(job_id)}.json"  # apart from job records

    def progress(self, stage: str) -> Path:
        """Written by the stage program itself (e.g. finetune's step and loss); advisory, shown by status."""
        return self.records(stage) / "progress.json"

    def metrics(self, stage: str, job_id: str) -> Path:
        """The attempt's metrics history (JSONL, appended by the stage program, bounded in size; read by report)."""
        return self.records(stage) / f"metrics.{_safe(job_id)}.jsonl"

    def run_ended(self, digest: str) -> Path:
        """Marks that the run-end notification for this set of jobs went out (notify.py)."""
        return self.all_records / f".run-ended.{digest}"

    @property
    def submitit(self) -> Path:
        return self.root / "submitit"

    @property
    def local(self) -> Path:
        return self.root / "local"

    @property
    def local_jobs(self) -> Path:
        return self.local / "jobs"

    @property
    def local_jobs_lock(self) -> Path:
        return self.local / "jobs.lock"

    @property
    def driver_lock(self) -> Path:
        return self.local / "driver.lock"

    @property
    def driver_log(self) -> Path:
        return self.local / "driver.log"

    @property
    def tune_configs(self) -> Path:
        """torchtune/<stage>.yaml: the config each torchtune stage's script writes and runs with."""
        return self.root / TUNE_CONFIGS

    def freeze(self, name: str) -> Path:
        """A `pip freeze` a create_env (or nxd finetune) script wrote: a key of FREEZES."""
        return self.root / FREEZES[name]

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def make_dirs(self) -> None:
        for folder in (self.scripts, self.logs, self.all_records, self.submitit):
            folder.mkdir(parents=True, exist_ok=True)
