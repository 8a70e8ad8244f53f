"""`tracking: {backend: mlflow}` for real: the finetune and evaluate programs, run by the job wrapper on the
local backend, log to a real `mlflow server` on loopback (started here): one MLflow run per stage named
<run id>/<stage>, tagged with the job id, params, the loss curve by step, evaluation metrics, the adapter and
the report as artifacts; the pipeline report links to them."""

from __future__ import annotations

import json
import sys

import pytest

from orchestrator import report
from orchestrator.state import RunPaths, Store
from tests.helpers import latest_run, run_cli, wait_terminal
from tests.report.mlflow_env import client_site, mlflow_server  # noqa: F401 (fixture)
from tests.stages.conftest import DATA, tiny  # noqa: F401 (fixture)

PY = sys.executable


@pytest.mark.slow
def test_finetune_and_evaluate_log_to_a_real_mlflow_server(write_spec, tiny, mlflow_server, monkeypatch,  # noqa: F811
                                                           capsys):
    site = client_site()
    monkeypatch.setenv("PYTHONPATH", str(site))  # the stage programs' mlflow client (mlflow-skinny)
    path = write_spec(f"""
        name: track
        tracking: {{backend: mlflow, uri: "{mlflow_server}", experiment: issue15}}
        stages:
          - name: train
            kind: command
            run: >-
              {PY} -m stages finetune --model {tiny} --data {DATA} --output ck --max-steps 6 --save-steps 3
              --batch-size 4 --seq-len 64 --lr 1e-2 --lora-r 4 --lora-alpha 8 --target-modules q_proj,v_proj
          - name: evaluate
            kind: command
            run: >-
              {PY} -m stages evaluate --model {tiny} --adapter ck/final --compare-to {tiny} --data {DATA}
              --seq-len 64 --max-loss-ratio 10 --report reports/evaluate.json
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=400)
    assert {s.value for s in states.values()} == {"COMPLETED"}, states

    sys.path.insert(0, str(site))
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_server)
        experiment = client.get_experiment_by_name("issue15")
        runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
        assert set(runs) == {f"{run_dir.name}/train", f"{run_dir.name}/evaluate"}
        train = runs[f"{run_dir.name}/train"]
        job = Store(run_dir).read().stages["train"].current.job_id
        assert train.info.status == "FINISHED"
        assert train.data.tags["pipeline.job_id"] == job and train.data.tags["pipeline.stage"] == "train"
        assert train.data.params["lr"] == "0.01" and train.data.params["max_steps"] == "6"
        loss = client.get_metric_history(train.info.run_id, "loss")
        assert [m.step for m in loss] == [1, 2, 3, 4, 5, 6]
        assert len(client.get_metric_history(train.info.run_id, "grad_norm")) == 6
        files = {f.path for f in client.list_artifacts(train.info.run_id, "final")}
        assert "final/adapter_model.safetensors" in files and "final/train_state.json" in files
        evaluated = runs[f"{run_dir.name}/evaluate"]
        assert evaluated.data.metrics["tuned.loss"] > 0 and evaluated.data.metrics["base.loss"] > 0
        assert {f.path for f in client.list_artifacts(evaluated.info.run_id, "reports")} == {"reports/evaluate.json"}
    finally:
        sys.path.remove(str(site))
    history = [json.loads(x) for x in RunPaths(run_dir).metrics("train", job).read_text().splitlines()]
    steps = [x for x in history if "step" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4, 5, 6] and all(x["grad_norm"] > 0 for x in steps)
    assert all(x["job_id"] == job and x["tokens_per_s"] > 0 for x in steps)
    assert steps[0]["lr"] > steps[-1]["lr"] >= 0  # the schedule decays to 0 at the last step
    links = report.collect(run_dir).links
    link = f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{train.info.run_id}"
    assert links["train"] == link
    capsys.readouterr()
    assert run_cli("status", run_dir.name, "--json") == 0
    assert json.loads(capsys.readouterr().out)["stages"]["train"]["tracking"] == link
