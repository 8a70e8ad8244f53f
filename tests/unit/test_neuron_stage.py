"""Trainium finetune program: argument and config plumbing only (no Trainium or optimum-neuron here)."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from orchestrator import plan, spec
from stages import neuron_finetune as nf
from tests.conftest import REPO


def rendered_args(stage: str) -> list[str]:
    built = plan.build(spec.load(REPO / "examples" / "llama3-8b-trn1.yaml"))
    text = built.stage(stage).script.replace("\\\n", " ")
    line = next(l for l in text.splitlines() if "-m stages neuron-finetune" in l)
    argv = shlex.split(line.split("-m stages neuron-finetune", 1)[1])
    return [a.replace('"$WORKDIR', "/w").replace('"$OUT"', "/o").replace('"$FINAL"', "/f") for a in argv]


def test_rendered_compile_and_train_args_parse_to_the_same_config(monkeypatch):
    configs = {}
    for stage, flag in (("compile", "1"), ("finetune", "0")):
        args = nf.parse([a.replace("$OUT", "/o").replace("$FINAL", "/f").replace("$MAX_STEPS", "7")
                         .replace("$WORKDIR", "/w") for a in rendered_args(stage)])
        monkeypatch.setenv("NEURON_EXTRACT_GRAPHS_ONLY", flag)
        configs[stage] = nf.training_kwargs(args, nf.mode())
        assert args.bf16 is True and args.tensor_parallel_size == 8 and args.packing is True
        assert nf.lora_kwargs(args)["target_modules"][-1] == "down_proj"
    compile_cfg, train_cfg = configs["compile"], configs["finetune"]
    assert compile_cfg.pop("save_strategy") == "no"
    assert compile_cfg == train_cfg  # defect 7: one parameter set
    assert train_cfg["max_length"] == 2048  # gen2 name (optimum-neuron#761)


@pytest.mark.parametrize("value", [None, "", "yes", "2", " 1"])
def test_mode_must_be_explicit(value, monkeypatch):
    if value is None:
        monkeypatch.delenv("NEURON_EXTRACT_GRAPHS_ONLY", raising=False)
    else:
        monkeypatch.setenv("NEURON_EXTRACT_GRAPHS_ONLY", value)
    with pytest.raises(nf.NeuronStageError, match="set it to 1"):
        nf.mode()


def test_newest_completed_checkpoint(tmp_path):
    for step, done in ((400, True), (800, True), (1200, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if done:
            (tmp_path / f"checkpoint-{step}" / "done").touch()
    assert nf.newest_checkpoint(tmp_path).name == "checkpoint-800"


def test_lora_not_applied_is_an_error():
    nf.check_trainable(6_815_744, 8_030_261_248)
    with pytest.raises(nf.NeuronStageError, match="LoRA does not look applied"):
        nf.check_trainable(8_030_261_248, 8_030_261_248)


def test_prompt_has_real_newlines():
    text = nf.format_dolly({"instruction": "Say hi", "context": "", "response": "hi"}, "</s>")
    assert text == "### Instruction:\nSay hi\n\n### Answer:\nhi</s>" and "\\n" not in text


def test_clear_error_without_optimum_neuron(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NEURON_EXTRACT_GRAPHS_ONLY": "0", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "stages.neuron_finetune", "--model", str(tmp_path), "--dataset", "d",
                          "--output-dir", str(tmp_path), "--final-dir", str(tmp_path), "--tensor-parallel-size", "8"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert "the Neuron training stack (optimum-neuron) is not installed here" in out.stderr
