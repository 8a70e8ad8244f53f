"""Trainium finetune program: arguments, data split, prompt, restart and checkpoint discovery, without Trainium.

The calls into optimum-neuron itself are checked against the real 0.4.5 source in
tests/stages/test_optimum_neuron.py."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import loader, plan
from stages import consolidate
from stages import neuron_finetune as nf
from stages.common import StageError, newest_checkpoint
from tests.conftest import REPO

ROWS = [{"instruction": f"Question {i}?", "context": "Some context." if i % 2 else "", "response": f"Answer {i}.",
         "category": "open_qa"} for i in range(40)]


def rendered_args(stage: str) -> list[str]:
    built = plan.build(loader.load(REPO / "examples" / "llama3-8b-trn1.yaml"))
    text = built.stage(stage).script.replace("\\\n", " ")
    line = next(l for l in text.splitlines() if "-m stages neuron-finetune" in l)
    argv = shlex.split(line.split("-m stages neuron-finetune", 1)[1])
    return [a.replace("$WORKDIR", "/w").replace("$OUT", "/o").replace("$FINAL", "/f").replace("$MAX_STEPS", "7")
            for a in argv]


def test_rendered_compile_and_train_args_parse_to_the_same_config(monkeypatch):
    configs = {}
    for stage, flag in (("compile", "1"), ("finetune", "0")):
        args = nf.parse(rendered_args(stage))
        monkeypatch.setenv("NEURON_EXTRACT_GRAPHS_ONLY", flag)
        configs[stage] = nf.training_kwargs(args, nf.mode())
        assert args.bf16 is True and args.tensor_parallel_size == 8 and args.packing is True
        assert nf.lora_kwargs(args)["target_modules"][-1] == "down_proj"
        assert args.dataset == Path("/w/data/dataset.jsonl") and args.chat_data == Path("/w/data/dataset.chat.jsonl")
        assert (args.eval_fraction, args.seed, args.system_prompt) == (0.01, 42, "You are a helpful assistant.")
    compile_cfg, train_cfg = configs["compile"], configs["finetune"]
    assert compile_cfg.pop("save_strategy") == "no"
    assert compile_cfg == train_cfg  # defect 7: one parameter set
    assert train_cfg["max_length"] == 2048  # gen2 name (optimum-neuron#761)


def test_the_evaluate_stage_splits_the_chat_file_as_finetune_did():
    """Finetune and evaluate hold out the same rows: same file order, fraction and seed in both scripts."""
    built = plan.build(loader.load(REPO / "examples" / "llama3-8b-trn1.yaml"))
    evaluate = shlex.split(built.stage("evaluate").script.split("python -m stages evaluate", 1)[1]
                           .replace("\\\n", " ").split("\n", 1)[0])
    train = nf.parse(rendered_args("finetune"))
    value = {flag: evaluate[i + 1] for i, flag in enumerate(evaluate) if flag.startswith("--")}
    assert value["--data"] == "$WORKDIR/data/dataset.chat.jsonl" and value["--format"] == "chat"
    assert float(value["--eval-fraction"]) == train.eval_fraction and int(value["--seed"]) == train.seed
    assert value["--compare-to"].endswith("model_artifacts/Meta-Llama-3-8B-Instruct")
    assert value["--model"] == "$WORKDIR/final_model_output" and float(value["--max-loss-ratio"]) == 0.97


@pytest.mark.parametrize("value", [None, "", "yes", "2", " 1"])
def test_mode_must_be_explicit(value, monkeypatch):
    if value is None:
        monkeypatch.delenv("NEURON_EXTRACT_GRAPHS_ONLY", raising=False)
    else:
        monkeypatch.setenv("NEURON_EXTRACT_GRAPHS_ONLY", value)
    with pytest.raises(StageError, match="set it to 1"):
        nf.mode()


def gen2_checkpoint(root: Path, step: int, done: bool) -> Path:
    """The folders optimum-neuron 0.4.5 + NxD 2.28 leave (tests/stages/test_optimum_neuron.py cites the source)."""
    shards = root / f"checkpoint-{step}" / "adapter_default" / "adapter_shards"
    (shards / "model").mkdir(parents=True)
    (shards / "checkpoint").write_text("1")
    if done:
        (shards / "done").write_text("1")
    return root / f"checkpoint-{step}"


def test_newest_completed_checkpoint_by_the_nxd_marker(tmp_path):
    gen2_checkpoint(tmp_path, 400, True)
    gen2_checkpoint(tmp_path, 800, True)
    gen2_checkpoint(tmp_path, 1200, False)  # the save was cut off: NxD writes `done` last
    (gen2_checkpoint(tmp_path, 1600, False) / "done").write_text("1")  # a `done` where NxD never writes one
    assert newest_checkpoint(tmp_path, nf.DONE_MARKERS["gen2"]).name == "checkpoint-800"
    assert consolidate.neuron_source(tmp_path, "gen2").name == "checkpoint-800"
    final = tmp_path / "final" / "adapter_default" / "adapter_shards"
    final.mkdir(parents=True)
    assert consolidate.neuron_source(tmp_path, "gen2").name == "checkpoint-800"  # final/ not finished
    (final / "done").write_text("1")
    assert consolidate.neuron_source(tmp_path, "gen2").name == "final"


def test_no_completed_checkpoint_is_a_clear_error(tmp_path):
    gen2_checkpoint(tmp_path, 400, False)
    with pytest.raises(StageError, match="adapter_default/adapter_shards/done"):
        consolidate.neuron_source(tmp_path, "gen2")


def test_a_restart_moves_the_previous_attempt_aside(tmp_path, monkeypatch):
    """0.4.5 refuses resume_from_checkpoint, so a requeued finetune trains from step 0 into a fresh directory."""
    out = tmp_path / "model_checkpoints"
    gen2_checkpoint(out, 400, True)
    monkeypatch.setenv("RANK", "3")
    assert nf.fresh_output_dir(out) is None and out.is_dir()  # only global rank 0 moves it
    monkeypatch.setenv("RANK", "0")
    aside = nf.fresh_output_dir(out)
    assert aside is not None and not out.exists()
    assert aside.name.startswith("model_checkpoints.previous-") and (aside / "checkpoint-400").is_dir()
    assert newest_checkpoint(out, nf.DONE_MARKERS["gen2"]) is None
    assert nf.fresh_output_dir(out) is None  # nothing there: nothing to move


def test_the_program_never_asks_for_a_resume():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(nf))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "train"]
    assert calls and all(not c.args and not c.keywords for c in calls)


def test_lora_not_applied_is_an_error():
    nf.check_trainable(6_815_744, 8_030_261_248)
    with pytest.raises(StageError, match="LoRA does not look applied"):
        nf.check_trainable(8_030_261_248, 8_030_261_248)


def test_bad_dataset_row_names_file_and_line(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(StageError, match=r"d.jsonl:2: missing column 'response'"):
        nf.read_rows(bad)


def test_clear_error_without_optimum_neuron(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NEURON_EXTRACT_GRAPHS_ONLY": "0", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "stages.neuron_finetune", "--model", str(tmp_path), "--dataset", "d",
                          "--output-dir", str(tmp_path / "o"), "--final-dir", str(tmp_path), "--tensor-parallel-size",
                          "8"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert "the Neuron training stack (optimum-neuron) is not installed here" in out.stderr


@pytest.mark.parametrize("interpreter", ["absent", "without-venv"])
def test_create_env_fails_first_when_python310_is_missing(interpreter, write_spec, tmp_path):
    """The SDK 2.28 DLAMI is Ubuntu 24.04 (Python 3.12): without python3.10 and its venv module the env stage
    stops before installing anything and says what is missing and how upstream installs it."""
    path = write_spec(f"""
        name: p
        family: neuron
        workdir: {tmp_path / 'work'}
        venv: {tmp_path / 'venv'}
        stages:
          - {{name: create_env, kind: create_env}}
        """)
    script = plan.build(loader.load(path)).stage("create_env").script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "hostname", "uname", "mkdir"):
        (bin_dir / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())
    if interpreter == "without-venv":  # Ubuntu's python3.10 without python3.10-venv: ensurepip cannot import
        (bin_dir / "python3.10").write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.exit(1)'\n")
        (bin_dir / "python3.10").chmod(0o755)
    (tmp_path / "create_env.sh").write_text(script)
    out = subprocess.run([str(bin_dir / "bash"), str(tmp_path / "create_env.sh")], capture_output=True, text=True,
                         env={"PATH": str(bin_dir), "PIPELINE_RUN_DIR": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    assert "error: python3.10 with its venv module (ensurepip) is missing on" in out.stderr
    assert "sudo add-apt-repository -y ppa:deadsnakes/ppa" in out.stderr and "python3.10-venv" in out.stderr
    assert not (tmp_path / "venv").exists()  # nothing half-done
