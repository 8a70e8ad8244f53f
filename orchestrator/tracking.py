"""The job side of `tracking:`: the variables the stage programs' tracker (stages/tracking.py) reads. MLflow's
client takes its server and experiment from MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME (mlflow 3.17
mlflow/environment_variables.py), so nothing else is passed. TensorBoard: event files under <run dir>/tensorboard."""

from __future__ import annotations

import json

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
        return {"PIPELINE_TRACKING": "tensorboard", "PIPELINE_TENSORBOARD_DIR": str(paths.root / "tensorboard")}
    if config.backend != "mlflow" or not config.uri:
        return {}
    pipeline = json.loads(paths.plan.read_text(encoding="utf-8"))["pipeline"]
    return {"PIPELINE_TRACKING": "mlflow", "MLFLOW_TRACKING_URI": config.uri,
            "MLFLOW_EXPERIMENT_NAME": config.experiment or pipeline}
