"""The tiny Llama chain on the real test Slurm cluster, finetune spanning two nodes with torchrun (gloo, CPU)."""

from __future__ import annotations

import json

import pytest

from orchestrator import state
from orchestrator.states import JobState
from tests.conftest import REPO
from tests.helpers import latest_run, run_cli, wait_terminal

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_tiny_chain_with_two_node_finetune(slurm_cluster, write_spec):
    data = REPO / "examples" / "data" / "dolly-tiny.jsonl"
    path = write_spec(f"""
        name: tiny-slurm
        cluster: {{name: dev, scheduler: slurm, hyperpod: "off", defaults: {{time: "00:20:00"}}}}
        family: hf
        settings:
          data: {data}
          lora: {{r: 16, alpha: 32, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}}
          learning_rate: 1.0e-2
          max_steps: 60
          batch_size: 4
          seq_len: 128
          dtype: fp32
          save_steps: 20
        stages:
          - {{name: download, kind: download}}
          - {{name: finetune, kind: finetune, resources: {{nodes: 2}}}}
          - {{name: consolidate, kind: consolidate}}
          - {{name: merge, kind: merge}}
          - {{name: evaluate, kind: evaluate, params: {{max_loss_ratio: 0.95}}}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=900)
    log = next((run_dir / "logs").glob("finetune.*.log")).read_text()
    assert set(states.values()) == {JobState.COMPLETED}, (states, log[-3000:])
    assert "(2 process(es))" in log  # one torchrun per node, world size 2
    nodes = state.Store(run_dir).read().stages["finetune"].current.nodes
    assert nodes and ("," in nodes or "[" in nodes)  # the job held two nodes
    report = json.loads((run_dir / "work" / "reports" / "evaluate.json").read_text())
    assert report["passed"]
