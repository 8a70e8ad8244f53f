"""Stage programs for real: a tiny Llama trained on CPU, resumed after SIGKILL, trained by 2 torchrun ranks,
consolidated, merged and evaluated. Uses no network."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.stages.conftest import DATA, stage

TRAIN = ["--data", str(DATA), "--batch-size", "8", "--seq-len", "128", "--lr", "1e-2", "--lora-r", "16",
         "--lora-alpha", "32", "--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"]


def test_download_tiny_writes_manifest(tiny):
    manifest = json.loads((tiny / "manifest.json").read_text())
    names = {f["path"] for f in manifest["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"])


def test_download_local_path_and_missing_weights(tiny, tmp_path):
    stage("download", "--source", str(tiny), "--output", str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "manifest.json").is_file()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    out = stage("download", "--source", str(broken), "--output", str(tmp_path / "b2"), check=False)
    assert out.returncode == 2 and "no weights" in out.stderr


def test_hub_download_without_network_fails_clearly(tmp_path, monkeypatch):
    """No hub is reachable here: HF_ENDPOINT points at a closed port, so the stage must fail, never exit 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    env.pop("HF_TOKEN", None)
    out = subprocess.run([sys.executable, "-m", "stages", "download", "--source", "hf://meta-llama/Meta-Llama-3-8B",
                          "--output", str(tmp_path / "m")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error:") and "Traceback" not in out.stderr


@pytest.mark.parametrize("content,message", [
    ('{"instruction": "a", "response": "b"}\n{"instruction": "a"\n', ":2: malformed JSON"),
    ('{"instruction": "a", "response": "b"}\n{"instruction": "a"}\n', ":2: missing column 'response'"),
    ('{"instruction": 5, "response": "b"}\n', ":1: column 'instruction' must be a string"),
    ("", "the file is empty"),
])
def test_bad_dataset_rows_are_named(content, message, tmp_path, tiny):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    out = stage("finetune", "--model", str(tiny), "--data", str(bad), "--output", str(tmp_path / "o"), check=False)
    assert out.returncode == 2 and f"{bad}" in out.stderr and message in out.stderr
    assert not (tmp_path / "o" / "checkpoint-1").exists()


def test_model_dir_without_config_is_refused(tmp_path):
    out = stage("finetune", "--model", str(tmp_path), "--data", str(DATA), "--output", str(tmp_path / "o"),
                check=False)
    assert out.returncode == 2 and "no config.json" in out.stderr


@pytest.mark.slow
def test_lora_finetune_consolidate_merge_evaluate(tiny, tmp_path):
    out = stage("finetune", "--model", str(tiny), "--output", str(tmp_path / "ck"), "--max-steps", "60",
                "--save-steps", "25", *TRAIN)
    assert "trainable params:" in out.stdout
    metrics = [json.loads(l) for l in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 60 and metrics[-1]["loss"] < metrics[0]["loss"] and metrics[0]["tokens_per_s"] > 0
    stage("consolidate", "--checkpoints", str(tmp_path / "ck"), "--output", str(tmp_path / "adapter"))
    merged = stage("merge", "--base", str(tiny), "--adapter", str(tmp_path / "adapter"), "--output",
                   str(tmp_path / "merged"), "--dtype", "fp32")
    assert "probe:" in merged.stdout and (tmp_path / "merged" / "tokenizer.json").is_file()
    stage("evaluate", "--model", str(tmp_path / "merged"), "--compare-to", str(tiny), "--data", str(DATA),
          "--seq-len", "128", "--max-loss-ratio", "0.95", "--report", str(tmp_path / "eval.json"))
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["passed"] and report["tuned"]["loss"] < report["base"]["loss"]
    # The verdict is real: the untuned model compared to itself does not pass.
    same = stage("evaluate", "--model", str(tiny), "--compare-to", str(tiny), "--data", str(DATA), "--seq-len",
                 "128", "--max-loss-ratio", "0.95", "--report", str(tmp_path / "same.json"), check=False)
    assert same.returncode == 3


def test_lora_on_missing_modules_is_an_error(tiny, tmp_path):
    out = stage("finetune", "--model", str(tiny), "--output", str(tmp_path / "o"), "--max-steps", "1",
                "--data", str(DATA), "--target-modules", "no_such_proj", check=False)
    assert out.returncode == 2 and "no_such_proj" in out.stderr + out.stdout


def test_consolidate_takes_newest_done_checkpoint(tmp_path, tiny):
    stage("finetune", "--model", str(tiny), "--output", str(tmp_path / "ck"), "--max-steps", "4", "--save-steps",
          "2", *TRAIN)
    shutil.rmtree(tmp_path / "ck" / "final")
    shutil.copytree(tmp_path / "ck" / "checkpoint-4", tmp_path / "ck" / "checkpoint-9")
    (tmp_path / "ck" / "checkpoint-9" / "done").unlink()  # incomplete: must be ignored
    out = stage("consolidate", "--checkpoints", str(tmp_path / "ck"), "--output", str(tmp_path / "a"))
    assert "from checkpoint-4" in out.stdout


@pytest.mark.slow
def test_killed_finetune_resumes_from_checkpoint(tiny, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "stages", "finetune", "--model", str(tiny), "--output", str(tmp_path / "ck"),
            "--max-steps", "400", "--save-steps", "10", *TRAIN]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (tmp_path / "ck" / "checkpoint-20" / "done").exists():
        assert time.monotonic() < deadline and first.poll() is None, "no checkpoint appeared"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = max(int(json.loads(l)["step"]) for l in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines())
    out = stage("finetune", "--model", str(tiny), "--output", str(tmp_path / "ck"), "--max-steps", "40",
                "--save-steps", "10", *TRAIN)
    assert "resuming from checkpoint-" in out.stdout
    resumed = int(out.stdout.split("resuming from checkpoint-")[1].split()[0])
    assert resumed >= 20
    steps = [json.loads(l)["step"] for l in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    after_restart = steps[steps.index(killed_at) + 1:] if killed_at in steps else steps
    assert after_restart[0] == resumed + 1  # the count continues, it does not restart at 1
    assert json.loads((tmp_path / "ck" / "final" / "train_state.json").read_text())["step"] == 40


@pytest.mark.slow
def test_torchrun_two_processes(tiny, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--nnodes=1", "--nproc_per_node=2", "--rdzv_backend=c10d",
                          "--rdzv_endpoint=127.0.0.1:0", "-m", "stages", "finetune", "--model", str(tiny),
                          "--output", str(tmp_path / "ck"), "--max-steps", "6", "--save-steps", "3", *TRAIN],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "(2 process(es))" in out.stdout
    assert (tmp_path / "ck" / "final" / "adapter_model.safetensors").is_file()
    assert len((tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()) == 6  # rank 0 only


def test_qlora_on_cpu_fails_clearly(tiny, tmp_path):
    out = stage("finetune", "--model", str(tiny), "--output", str(tmp_path / "o"), "--method", "qlora",
                "--data", str(DATA), check=False)
    assert out.returncode == 2 and "QLoRA needs a CUDA GPU" in out.stderr


def test_one_step_is_profiled_on_request(tiny, tmp_path):
    """--profile-step N writes torch.profiler's table for that optimizer step (bench/finetune.py --profile)."""
    stage("finetune", "--model", str(tiny), "--output", str(tmp_path / "ck"), "--max-steps", "2", "--save-steps",
          "10", "--profile-step", "2", *TRAIN)
    table = (tmp_path / "ck" / "profile-step-2.txt").read_text()
    assert "Self CPU" in table and "aten::" in table and "by input shape" in table
    assert not (tmp_path / "ck" / "profile-step-1.txt").exists()
