"""`tracking: {backend: tensorboard}`: the real finetune program, run by the job wrapper on the local backend,
writes TensorBoard event files under <run dir>/tensorboard/<stage>, read back with TensorBoard's own
EventAccumulator (tensorboard 2.21, installed by the test into a cache with --no-deps)."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import latest_run, run_cli, wait_terminal
from tests.report.mlflow_env import tensorboard_site
from tests.stages.conftest import DATA, tiny  # noqa: F401 (fixture)


@pytest.mark.slow
def test_finetune_writes_tensorboard_events_in_the_run_dir(write_spec, tiny, monkeypatch):  # noqa: F811
    site = tensorboard_site()
    monkeypatch.setenv("PYTHONPATH", str(site))
    path = write_spec(f"""
        name: board
        tracking: {{backend: tensorboard}}
        stages:
          - name: train
            kind: command
            run: >-
              {sys.executable} -m stages finetune --model {tiny} --data {DATA} --output ck --max-steps 4
              --save-steps 4 --batch-size 4 --seq-len 64 --lora-r 4 --lora-alpha 8 --target-modules q_proj,v_proj
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    assert {s.value for s in wait_terminal(run_dir, timeout=300).values()} == {"COMPLETED"}
    sys.path.insert(0, str(site))
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tensorboard" / "train"))
        events.Reload()
        assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
        assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(events.Tags()["scalars"])
        assert "params/text_summary" in events.Tags()["tensors"]
    finally:
        sys.path.remove(str(site))
