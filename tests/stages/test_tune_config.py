"""torchtune configs for real: `python -m stages tune-config` finishes each rendered config from the files
present, and torchtune 0.6.1's own `tune validate` (the pinned release, installed by this test) accepts every
one of them: every `_component_` resolves and its arguments bind. The recipes themselves run on CPU in
tests/stages/test_torchtune_recipes.py (with the torchtune installed by the fixture here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import loader, plan
from tests.conftest import REPO
from tests.stages.conftest import stage

# torchtune and what its recipes import that this venv lacks, without their dependencies (pip would otherwise
# pull a second torch of several GB: this venv's CPU torch is used). torchtune 0.6.1's own requirements
# (its wheel's METADATA): torchdata==0.11.0 (the finetune recipes' StatefulDataLoader), datasets, safetensors,
# kagglehub, sentencepiece, tiktoken, blobfile>=2, tokenizers, numpy, omegaconf, psutil, Pillow; datasets,
# lm_eval 0.4.8 (eleuther_eval), safetensors, tokenizers and the rest come from the venv (the `eval` extra).
TORCHTUNE_SITE = ["torchtune==0.6.1", "torchao==0.10.0", "torchdata==0.11.0", "omegaconf==2.4.0",
                  "antlr4-python3-runtime==4.9.3", "sentencepiece==0.2.3", "tiktoken==0.14.0", "blobfile==3.3.0",
                  "pycryptodomex==3.24.2", "pillow==13.0.0",  # blobfile's; eleuther_eval imports PIL
                  "kagglehub==0.3.12"]  # the `tune` CLI imports it; 0.3.x needs no protobuf


@pytest.fixture(scope="session")
def torchtune_site() -> Path:
    site = Path(sys.prefix) / "torchtune-0.6.1-site"
    marker = site / ".complete"
    if not marker.is_file() or marker.read_text() != " ".join(TORCHTUNE_SITE):
        shutil.rmtree(site, ignore_errors=True)
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                              "--upgrade", *TORCHTUNE_SITE], capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"could not install torchtune for the check:\n{out.stderr[-2000:]}"
        marker.write_text(" ".join(TORCHTUNE_SITE))
    return site


def fake_model(root: Path, shards: int = 3) -> Path:
    """A model directory as `tune download` leaves it (files are empty: only their names matter here)."""
    model = root / "model"
    (model / "original").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "original" / "tokenizer.model").write_text("")
    for i in range(1, shards + 1):
        (model / f"model-{i:05d}-of-{shards:05d}.safetensors").write_text("")
    return model


def config_json(script: str) -> str:
    return script.split("<<'PIPELINE_TUNE_CONFIG'\n", 1)[1].split("\nPIPELINE_TUNE_CONFIG\n", 1)[0]


def tune_config(config: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "stages", "tune-config", *argv], input=config, text=True,
                         capture_output=True, env=env, timeout=60)
    assert not check or out.returncode == 0, out.stderr
    return out


def test_every_rendered_config_passes_torchtunes_own_validate(torchtune_site, tmp_path):
    model = fake_model(tmp_path)
    scripts = {s.name: s.script for s in plan.build(loader.load(REPO / "examples" / "llama3-70b-torchtune-p5.yaml")).stages}
    checked = []
    for name, script in scripts.items():
        if "PIPELINE_TUNE_CONFIG" not in script:
            continue
        target = tmp_path / f"{name}.yaml"
        tune_config(config_json(script), "--output", str(target), "--checkpoint-dir", str(model), "--tokenizer",
                    str(model / "original" / "tokenizer.model"), "--set", f"output_dir={tmp_path / name}",
                    "--set", f"checkpointer.output_dir={tmp_path / name}")
        out = subprocess.run([sys.executable, "-m", "torchtune._cli.tune", "validate", str(target)],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(torchtune_site)})
        assert out.returncode == 0 and "Config is well-formed!" in out.stdout, (name, out.stderr[-2000:])
        checked.append(name)
    assert checked == ["full", "lora", "evaluate", "quantize", "generate"]


def test_a_removed_component_fails_torchtunes_validate(torchtune_site, tmp_path):
    """The check has teeth: the seed's 2024 checkpointer path is refused by the same command."""
    model = fake_model(tmp_path)
    old = '{"checkpointer": {"_component_": "torchtune.utils.FullModelHFCheckpointer", "model_type": "LLAMA3"}}'
    tune_config(old, "--output", str(tmp_path / "old.yaml"), "--checkpoint-dir", str(model),
                "--set", "checkpointer.output_dir=/tmp")
    out = subprocess.run([sys.executable, "-m", "torchtune._cli.tune", "validate", str(tmp_path / "old.yaml")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(torchtune_site)})
    assert out.returncode != 0 and "torchtune.utils" in out.stderr


def test_checkpoint_files_come_from_the_files_present(tmp_path):
    import yaml

    model = fake_model(tmp_path, shards=30)
    tune_config("{}", "--output", str(tmp_path / "c.yaml"), "--checkpoint-dir", str(model))
    files = yaml.safe_load((tmp_path / "c.yaml").read_text())["checkpointer"]["checkpoint_files"]
    # A list, so that quantize.py's `checkpoint_files[0]` works (a {filename_format, max_filename} mapping fails).
    assert files == [f"model-{i:05d}-of-00030.safetensors" for i in range(1, 31)]
    (model / "model-00007-of-00030.safetensors").unlink()
    out = tune_config("{}", "--output", str(tmp_path / "c.yaml"), "--checkpoint-dir", str(model), check=False)
    assert out.returncode == 2 and "1 of 30 safetensors shards missing (e.g. model-00007-of-00030" in out.stderr


def test_resume_only_when_torchtune_left_recipe_state(tmp_path):
    import yaml

    state = tmp_path / "tuned" / "recipe_state" / "recipe_state.pt"
    tune_config('{"resume_from_checkpoint": false}', "--output", str(tmp_path / "a.yaml"), "--resume-if", str(state))
    assert yaml.safe_load((tmp_path / "a.yaml").read_text())["resume_from_checkpoint"] is False
    state.parent.mkdir(parents=True)
    state.write_text("")
    tune_config('{"resume_from_checkpoint": false}', "--output", str(tmp_path / "b.yaml"), "--resume-if", str(state))
    assert yaml.safe_load((tmp_path / "b.yaml").read_text())["resume_from_checkpoint"] is True


def test_incomplete_download_is_refused(tmp_path):
    model = fake_model(tmp_path)
    (model / "original" / "tokenizer.model").unlink()
    out = stage("tune-config", "--check-model", str(model), check=False)
    assert out.returncode == 2 and "tokenizer.model: missing" in out.stderr
