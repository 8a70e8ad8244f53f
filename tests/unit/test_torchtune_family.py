"""The torchtune family (seed 002): golden scripts, the DAG, the seed's defects fixed, and spec errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from orchestrator import loader, plan
from orchestrator.errors import SpecError
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "llama3-70b-torchtune-p5.yaml"
GOLDEN = REPO / "tests" / "golden" / "llama3-70b-torchtune-p5"
UPDATE = os.environ.get("PIPELINE_UPDATE_GOLDEN") == "1"

# Old component path (the 2024 seed configs) -> the one of the pinned torchtune 0.6.1 (stages.md 4.1, torchtune#1990).
RENAMED = {
    "torchtune.utils.FullModelHFCheckpointer": "torchtune.training.FullModelHFCheckpointer",
    "torchtune.utils.metric_logging.WandBLogger": "torchtune.training.metric_logging.WandBLogger",
    "torchtune.utils.metric_logging.DiskLogger": "torchtune.training.metric_logging.DiskLogger",
    "torchtune.modules.get_cosine_schedule_with_warmup":
        "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
    "torchtune.utils.quantization.Int4WeightOnlyQuantizer": "torchtune.training.quantization.Int4WeightOnlyQuantizer",
    # stages.md names LinearCrossEntropyLoss: that is torchtune main after 0.6.1; the pinned release has this one.
    "torch.nn.CrossEntropyLoss": "torchtune.modules.loss.CEWithChunkedOutputLoss",
}


def component_paths(text: str) -> list[str]:
    """Every `_component_` value in a rendered config."""
    return re.findall(r'"_component_": "([^"]+)"', text)


def built() -> plan.Plan:
    return plan.build(loader.load(EXAMPLE))


def test_example_matches_golden_files():
    for stage in built().stages:
        golden = GOLDEN / f"{stage.name}.sh"
        if UPDATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(stage.script)
        assert stage.script == golden.read_text(), f"{stage.name}.sh differs; PIPELINE_UPDATE_GOLDEN=1 if intended"


def test_evaluate_and_quantize_both_follow_the_lora_finetune():
    parents = {s.name: s.after for s in built().stages}
    assert parents["evaluate"] == ("lora",) and parents["quantize"] == ("lora",)
    assert parents["full"] == ("download",) and parents["lora"] == ("download",)  # the two finetunes run side by side


def test_scripts_fix_the_seed_defects():
    scripts = {s.name: s.script for s in built().stages}
    for name, text in scripts.items():
        assert text.startswith("#!/usr/bin/env bash\n"), name  # defect 5
        assert "HF_TOKEN" not in text.replace("HF_TOKEN from the environment", ""), name  # defect 3
        assert "WANDB_API_KEY" not in text, name
        if name != "create_env":
            assert "source /fsx/ubuntu/torchtune-llama3-70b/venv/bin/activate" in text, name  # defect 4
        for old in RENAMED:
            assert f'"{old}"' not in text, (name, old)  # removed component paths (defect 20, torchtune#1990)
        if "tune run" in text:
            assert text.index("tune validate") < text.index("tune run"), name  # configs checked before the GPUs
    assert "torchtune==0.6.1" in scripts["create_env"] and "pip freeze" in scripts["create_env"]  # pinned, recorded
    lora = scripts["lora"]
    code = "\n".join(line for line in lora.splitlines() if not line.lstrip().startswith("#"))
    assert code.count("--nnodes") == 1 and "--rdzv_endpoint=\"$PIPELINE_HEAD_ADDR:$PIPELINE_RDZV_PORT\"" in lora  # 9
    assert "--ntasks-per-node=1" in lora and "lora_finetune_distributed" in lora
    assert "full_finetune_distributed" in scripts["full"]
    # Evaluation and quantization read the newest epoch found at run time (defects 1, 21), and the 70B model
    # (141 GB in bf16) is not put on one 80 GiB GPU by these single-device recipes: device auto -> cpu (defect 22).
    for name in ("evaluate", "quantize", "generate"):
        assert 'SOURCE_DIR="$WORKDIR/tuned/lora"' in scripts[name] and "epoch_*" in scripts[name]
        assert '"device": "cpu"' in scripts[name] and '"device": "cuda"' not in scripts[name], name
    assert "hf_model_" not in "".join(scripts.values())  # no hand-written shard lists


def test_component_paths_are_the_pinned_releases():
    known = {"torch.optim.AdamW", *RENAMED.values(), "torchtune.models.llama3.llama3_tokenizer",
             "torchtune.models.llama3.llama3_70b", "torchtune.models.llama3.lora_llama3_70b",
             "torchtune.datasets.alpaca_dataset", "torchtune.training.quantization.Int8DynActInt4WeightQuantizer"}
    found = {path for s in built().stages for path in component_paths(s.script)}
    assert found and found <= known, found - known


@pytest.mark.parametrize("stages,key,message", [
    ("""
  - {name: download, kind: download}
  - {name: ft, kind: finetune}
  - {name: evaluate, kind: evaluate, params: {source: nope}}""", "source", "'nope' is not a torchtune finetune"),
    ("""
  - {name: download, kind: download}
  - {name: ft, kind: finetune}
  - {name: quantize, kind: quantize, after: [download], params: {source: ft}}""", "stages", "does not wait for it"),
    ("""
  - {name: download, kind: download}
  - {name: a, kind: finetune}
  - {name: b, kind: finetune, after: [download]}""", "method", "would write the same tuned/lora/"),
    ("""
  - {name: download, kind: download}
  - {name: a, kind: finetune}
  - {name: b, kind: finetune, after: [download], params: {method: full}}
  - {name: g, kind: generate, after: [a, b]}""", "params", "must say which finetune it reads"),
])
def test_bad_dags_name_the_key(write_spec, stages, key, message):
    path = write_spec(f"name: tt\nfamily: torchtune\nvenv: /v\nstages:{stages}\n")
    with pytest.raises(SpecError) as err:
        loader.load(path)
    text = str(err.value)
    assert message in text and key in text and f"{path}:" in text


def test_removed_dataset_builder_is_rejected(write_spec):
    path = write_spec("name: tt\nfamily: torchtune\nvenv: /v\nsettings: {dataset: wikitext}\n"
                      "stages:\n  - {name: download, kind: download}\n")
    with pytest.raises(SpecError, match="not a torchtune.datasets builder"):
        loader.load(path)


def test_hostile_prompt_stays_inside_the_config(write_spec):
    prompt = "x\nPIPELINE_TUNE_CONFIG\ntouch /tmp/MARKER $(id) `id` ';"
    path = write_spec("name: tt\nfamily: torchtune\nvenv: /v\nstages:\n  - {name: download, kind: download}\n"
                      "  - {name: ft, kind: finetune}\n"
                      f"  - {{name: g, kind: generate, params: {{prompt: {prompt!r}}}}}\n".replace("\\n", "\\n"))
    script = {s.name: s.script for s in plan.build(loader.load(path)).stages}["g"]
    body = script.split("<<'PIPELINE_TUNE_CONFIG'\n", 1)[1]
    config, rest = body.split("\nPIPELINE_TUNE_CONFIG\n", 1)
    assert "touch /tmp/MARKER" in config and "touch" not in rest  # JSON-escaped: the heredoc cannot be closed early


def test_every_torchrun_is_the_shared_launcher_with_is_host():
    """Defect 3: the torchtune finetunes use the one torchrun macro (templates/_launch.sh.j2), is_host included,
    with the same flags as the hf family's torchrun."""
    scripts = {s.name: s.script for s in built().stages}
    hf = plan.build(loader.load(REPO / "examples" / "llama3-70b-fsdp-qlora-gpu.yaml")).stage("finetune").script
    hf_line = next(line for line in hf.splitlines() if line.startswith("torchrun "))
    shared = hf_line.split(" ", 1)[1].split(" -m stages", 1)[0].replace("--nproc_per_node=8", "--nproc_per_node=N")
    for name in ("full", "lora"):
        line = next(line for line in scripts[name].splitlines() if line.startswith("tune run "))
        assert "--rdzv_conf=is_host=$(( ${SLURM_NODEID:-0} == 0 ))" in line, name
        assert line[len("tune run "):].rstrip(" \\").replace("--nproc_per_node=8", "--nproc_per_node=N") == shared


def small_spec(write_spec, settings: str = "", stage: str = "") -> Path:
    return write_spec("name: tt\nfamily: torchtune\nvenv: /v\n" + (f"settings: {{{settings}}}\n" if settings else "")
                      + "stages:\n  - {name: download, kind: download}\n  - {name: ft, kind: finetune}\n"
                      + stage)


def test_single_device_recipes_and_devices_follow_what_fits(write_spec):
    path = small_spec(write_spec, "model: llama3_8b, nproc_per_node: 1",
                      "  - {name: q, kind: quantize, params: {quantizer: 8da4w}}\n  - {name: e, kind: evaluate}\n")
    scripts = {s.name: s.script for s in plan.build(loader.load(path)).stages}
    assert "tune run lora_finetune_single_device --config" in scripts["ft"] and "--rdzv" not in scripts["ft"]
    # 8B in bf16 (15 GiB) fits an 80 GiB GPU: auto stays on the GPU.
    assert '"device": "cuda"' in scripts["e"] and '"device": "cuda"' in scripts["q"]
    assert "Int8DynActInt4WeightQuantizer" in scripts["q"] and '*-8da4w.pt' in scripts["q"]


@pytest.mark.parametrize("settings,stage,key,message", [
    ("", "  - {name: e, kind: evaluate, params: {device: cuda}}\n", "device",
     "evaluate: llama3_70b in bf16 needs ~164 GiB on one GPU (131 GiB of weights), one GPU has 80 GiB"),
    ("", "  - {name: q, kind: quantize}\n", "quantizer", "quantize: llama3_70b in bf16 needs ~164 GiB"),
    ("model: llama3_8b", "  - {name: q, kind: quantize, params: {device: cpu}}\n", "device",
     "packs weights for CUDA"),
])
def test_single_device_stage_that_cannot_run_is_refused(write_spec, settings, stage, key, message):
    with pytest.raises(SpecError) as err:
        loader.load(small_spec(write_spec, settings, stage))
    assert message in str(err.value) and f".params.{key}" in str(err.value), str(err.value)


def test_torch_is_pinned_with_torchtune():
    """Defect 7: lm_eval asks only torch>=1.8, so an unpinned env takes the newest torch."""
    create_env = built().stage("create_env").script
    install = next(line for line in create_env.splitlines() if "pip install torch" in line).split()
    assert {"torch==2.7.0", "torchao==0.10.0", "torchtune==0.6.1", "torchdata==0.11.0", "lm_eval==0.4.8"} <= set(install)
