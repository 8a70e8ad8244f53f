"""Experiment tracking from inside the stage programs: MLflow when the job wrapper set PIPELINE_TRACKING=mlflow
(the spec's `tracking:`), with MLflow's own MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME variables; TensorBoard
event files in the run directory with PIPELINE_TRACKING=tensorboard; a W&B offline run under the run directory
with PIPELINE_TRACKING=wandb (WANDB_MODE=offline: nothing leaves the node, `wandb sync <dir>` uploads it later).

One MLflow run per stage of a pipeline run, named `<run id>/<stage>` and tagged with the job id, SLURM_JOB_ID,
restart and variant; a requeued or resumed attempt reopens that MLflow run, so its curve continues. Rank 0 only.
Tracking is advisory: any MLflow error is one warning line and the stage goes on (the client calls used:
mlflow 3.17 mlflow/tracking/fluent.py set_experiment, search_runs, start_run, log_params, log_metrics,
log_artifacts, end_run).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.history import note

_run: Any = None
_broken = False


_writer: Any = None
_wandb_run: Any = None
BACKENDS = ("mlflow", "tensorboard", "wandb")


def backend() -> str | None:
    """"mlflow", "tensorboard", "wandb" or None (off, broken, or not rank 0)."""
    name = os.environ.get("PIPELINE_TRACKING")
    ok = name in BACKENDS and not _broken and int(os.environ.get("RANK", "0")) == 0
    return name if ok else None


def enabled() -> bool:
    return backend() is not None


def _tensorboard() -> Any:
    """TensorBoard event files under PIPELINE_TENSORBOARD_DIR/<stage> (torch.utils.tensorboard.SummaryWriter,
    which needs the `tensorboard` package); one folder per stage, so `tensorboard --logdir` shows them all."""
    global _writer
    if _writer is None:
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(os.environ["PIPELINE_TENSORBOARD_DIR"]) / os.environ.get("PIPELINE_STAGE", "stage")
        _writer = SummaryWriter(log_dir=str(folder))
    return _writer


def _tags() -> dict[str, str]:
    """What every backend records about the attempt: run, stage, job id, SLURM_JOB_ID, restart, variant."""
    return {"pipeline.run": Path(os.environ.get("PIPELINE_RUN_DIR", "run")).name,
            "pipeline.stage": os.environ.get("PIPELINE_STAGE", "stage"),
            "pipeline.job_id": os.environ.get("PIPELINE_JOB_ID", ""),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "pipeline.restart": os.environ.get("SLURM_RESTART_COUNT", "0") or "0",
            "pipeline.variant": os.environ.get("PIPELINE_VARIANT", "")}


def _wandb() -> Any:
    """The W&B run `<run id>/<stage>`, offline, its files under PIPELINE_WANDB_DIR/<stage> (wandb.init makes a
    `wandb/offline-run-<time>-<id>` folder there). The run id is fixed per stage, so a requeued or resumed
    attempt's folder carries the same id and `wandb sync` adds it to the same W&B run (wandb 0.31
    wandb/sdk/wandb_init.py init: id, resume="allow", mode, dir, tags, config). Offline mode uses no API key;
    one declared as the secret WANDB_API_KEY reaches the program's environment at run time only (the job wrapper),
    and is never passed or written here."""
    global _wandb_run
    if _wandb_run is not None:
        return _wandb_run
    wandb = importlib.import_module("wandb")  # optional (the `tracking` extra), so mypy need not find it

    tags = _tags()
    stage = tags["pipeline.stage"]
    name = f"{tags['pipeline.run']}/{stage}"
    folder = Path(os.environ["PIPELINE_WANDB_DIR"]) / stage
    folder.mkdir(parents=True, exist_ok=True)
    # a W&B run id may not hold any of :;,#?/' (wandb 0.31 wandb/sdk/wandb_settings.py validate_run_id); tags are
    # 1..64 characters (validate_run_tags)
    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", name)[-64:]
    _wandb_run = wandb.init(mode="offline", dir=str(folder), project=os.environ.get("WANDB_PROJECT"),
                            entity=os.environ.get("WANDB_ENTITY") or None, name=name, id=run_id, resume="allow",
                            tags=[f"{k.removeprefix('pipeline.')}:{v}"[:64] for k, v in tags.items() if v],
                            config={"pipeline": tags})
    where = str(_wandb_run.settings.sync_dir)
    note(event="tracking", backend="wandb", run_id=run_id, dir=where, url=f"wandb sync {where}")
    return _wandb_run


def _guard(func: Callable[..., None]) -> Callable[..., None]:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        global _broken
        if not enabled():
            return
        try:
            func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 (the tracker is never a reason to fail a training run)
            _broken = True
            print(f"warning: tracking off for this job: {backend_name()} said {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    return wrapper


def backend_name() -> str:
    return os.environ.get("PIPELINE_TRACKING", "the tracker")


def _mlflow() -> Any:
    """The active MLflow run's module, starting or reopening `<run id>/<stage>` on first use."""
    global _run
    import mlflow

    if _run is not None:
        return mlflow
    run_id = Path(os.environ.get("PIPELINE_RUN_DIR", "run")).name
    stage = os.environ.get("PIPELINE_STAGE", "stage")
    name = f"{run_id}/{stage}"
    experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or run_id.rsplit("-", 3)[0])
    found = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list",
                               filter_string=f"tags.`mlflow.runName` = '{name}'")
    _run = mlflow.start_run(run_id=found[0].info.run_id) if found else mlflow.start_run(run_name=name)
    mlflow.set_tags(_tags())
    note(event="tracking", backend="mlflow", experiment_id=experiment.experiment_id, run_id=_run.info.run_id,
         url=f"{mlflow.get_tracking_uri().rstrip('/')}/#/experiments/{experiment.experiment_id}/runs/"
             f"{_run.info.run_id}")
    return mlflow


@_guard
def params(values: dict[str, Any]) -> None:
    """Hyper-parameters (MLflow keeps params immutable: a resumed attempt logs only the ones not logged yet)."""
    if backend() == "wandb":
        _wandb().config.update({k: v for k, v in values.items() if v is not None}, allow_val_change=True)
        return
    if backend() == "tensorboard":
        _tensorboard().add_text("params", "\n".join(f"    {k} = {v}" for k, v in sorted(values.items())))
        return
    mlflow = _mlflow()
    known = mlflow.get_run(_run.info.run_id).data.params
    fresh = {k: str(v)[:500] for k, v in values.items() if k not in known and v is not None}
    if fresh:
        mlflow.log_params(fresh)


@_guard
def metrics(step: int | None, values: dict[str, Any]) -> None:
    numbers = {k: float(v) for k, v in flatten(values).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "steps", "time")}
    if numbers and backend() == "tensorboard":
        for key, value in numbers.items():
            _tensorboard().add_scalar(key, value, global_step=step)
        _tensorboard().flush()
    elif numbers and backend() == "wandb":
        _wandb().log(numbers, step=step)
    elif numbers:
        _mlflow().log_metrics(numbers, step=step)


@_guard
def artifact(path: Path, name: str) -> None:
    if backend() in ("tensorboard", "wandb"):
        return  # scalars and text only: the artifacts stay where the stage wrote them, in the same run dir
    mlflow = _mlflow()
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=name)
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path=name)


@_guard
def end(ok: bool) -> None:
    global _run, _writer, _wandb_run
    if _wandb_run is not None:
        _wandb_run.finish(exit_code=0 if ok else 1)
        _wandb_run = None
    if _writer is not None:
        _writer.close()
        _writer = None
    if _run is not None:
        _mlflow().end_run(status="FINISHED" if ok else "FAILED")
        _run = None


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
