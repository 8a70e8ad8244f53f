"""Family pieces written once (issue 12 item 5): a stage of another family gets that family's cross-stage checks,
and the neuron/nxd inference step renders from the one shared params model."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import loader, plan
from orchestrator.errors import SpecError


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        loader.load(path)
    return str(info.value)


def test_a_stage_of_another_family_gets_that_familys_check(write_spec):
    """The pipeline's family is `command`; one stage is a neuron download. The neuron family's check (every
    neuron stage activates `venv:`) must still run: before, only the pipeline family's check ran."""
    path = write_spec("""
        name: p
        family: command
        stages:
          - name: prep
            kind: command
            run: echo hi
          - name: fetch
            kind: download
            family: neuron
    """)
    assert "the neuron family needs `venv:`" in error_of(path)


def test_torchtune_check_runs_for_torchtune_stages_in_another_family(write_spec):
    """Two torchtune LoRA finetunes would write the same tuned/lora/ folder; torchtune's check refuses them even
    when the pipeline's own family is another one."""
    path = write_spec("""
        name: p
        family: command
        venv: /tmp/v
        stages:
          - {name: a, kind: finetune, family: torchtune}
          - {name: b, kind: finetune, family: torchtune, after: [a]}
    """)
    assert "are both lora finetunes" in error_of(path)


def _inference_script(write_spec, family: str, params: str) -> str:
    path = write_spec(f"""
        name: p
        family: {family}
        venv: /tmp/v
        stages:
          - name: infer
            kind: inference
            params: {params}
    """)
    return plan.build(loader.load(path)).stages[0].script


def test_shared_inference_params_render_per_family(write_spec):
    """One InferenceParams model: nxd may now pass top_p (stages/inference.py takes --top-p), and a null
    system_prompt leaves the flag out in either family (the program then uses the training system prompt)."""
    nxd = _inference_script(write_spec, "nxd", "{top_p: 0.5}")
    assert "--temperature 0.0 --top-p 0.5 \\\n" in nxd
    assert "--system-prompt" not in nxd
    neuron = _inference_script(write_spec, "neuron", "{system_prompt: null}")
    assert "--system-prompt" not in neuron
    assert "--temperature 0.6 --top-p 0.9 \\\n" in neuron


def test_hf_inference_and_lora_are_the_shared_models(write_spec):
    """hf's inference and LoRA params are common's with hf's defaults (one model each, issue 12 item 5): hf now
    takes top_p too, and the one inference macro (templates/_inference.sh.j2) renders it as for nxd."""
    from orchestrator.families import common, hf

    assert issubclass(hf.InferenceParams, common.InferenceParams) and issubclass(hf.HfLora, common.Lora)
    assert issubclass(hf.EvaluateParams, common.EvaluateParams)
    script = _inference_script(write_spec, "hf", "{top_p: 0.5}")
    assert '--base "$WORKDIR/model" \\\n  --model "$WORKDIR/merged" \\\n' in script
    assert "--max-new-tokens 32 --temperature 0.0 --top-p 0.5 \\\n" in script
