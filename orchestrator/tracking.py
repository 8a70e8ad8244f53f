"""The job side of `tracking:`: the variables the stage programs' tracker (stages/tracking.py) reads. MLflow's
client takes its server and experiment from MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME (mlflow 3.17
mlflow/environment_variables.py), so nothing else is passed. TensorBoard: event files under <run dir>/tensorboard.
W&B: offline runs under <run dir>/wandb, with W&B's own WANDB_MODE / WANDB_PROJECT / WANDB_ENTITY (wandb 0.31
wandb/sdk/wandb_settings.py). Its API key is never set here: declare WANDB_API_KEY under `secrets:` and the job
wrapper resolves it at run time like any secret (offline mode itself needs none)."""

from __future__ import annotations

from orchestrator.notify import spec_section
from orchestrator.spec import Tracking
from orchestrator.state import RunPaths


def job_env(paths: RunPaths) -> dict[str, str]:
    section = spec_section(paths, "tracking")
    if not section:
        return {}
    try:
        config = Tracking.model_validate(section)
    except ValueError:
        return {}
    if config.backend == "tensorboard":
        return {"PIPELINE_TRACKING": "tensorboard", "PIPELINE_TENSORBOARD_DIR": str(paths.tensorboard)}
    if config.backend == "wandb":
        env = {"PIPELINE_TRACKING": "wandb", "PIPELINE_WANDB_DIR": str(paths.wandb), "WANDB_MODE": "offline",
               "WANDB_PROJECT": config.project or _pipeline(paths)}
        return env | ({"WANDB_ENTITY": config.entity} if config.entity else {})
    if config.backend != "mlflow" or not config.uri:
        return {}
    pipeline = _pipeline(paths)
    return {"PIPELINE_TRACKING": "mlflow", "MLFLOW_TRACKING_URI": config.uri,
            "MLFLOW_EXPERIMENT_NAME": config.experiment or pipeline}


def _pipeline(paths: RunPaths) -> str:
    return str(paths.plan_json()["pipeline"])
