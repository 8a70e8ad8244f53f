"""torchtune 0.6.1's recipes run for real, on CPU, from the scripts the torchtune family renders.

Each test renders a pipeline of the torchtune family (the seed 002 example's settings, shrunk), and runs the
rendered stage script itself with bash: `tune-config` merges the run-time paths into the generated config,
the real `tune validate` checks it, and the real `tune run <recipe>` trains, evaluates, quantizes or generates.
The model is a tiny Llama 3 (transformers LlamaForCausalLM, saved as sharded safetensors with config.json) in
the layout `tune download` leaves and torchtune's FullModelHFCheckpointer reads, with a tiny tiktoken BPE file
at original/tokenizer.model made here.

What is changed for the tiny model and the CPU, and nothing else, is appended to `tune run` by
tests/stages/tune_cpu.py (the test's `tune` on PATH): the model component (the generic
`torchtune.models.llama3.llama3` / `lora_llama3` builders with tiny sizes instead of llama3_8b), `device=cpu`
for the finetunes (the family trains on GPUs), `fsdp_cpu_offload=False` (CPU offload from the CPU: gloo refuses
"cpu:gloo,cpu:gloo"), `log_peak_memory_stats=False` (CUDA stats), the special tokens file (torchtune's
`special_tokens_path`, so the vocabulary is 512, not 128256) and the local Alpaca-format data file
(`dataset.source=json`: the Hub is not reachable). torchtune 0.6.1's distributed recipes do not run on a CPU
torch as released (see tune_cpu.py for the three CUDA-only calls it stands in for); they run on two gloo ranks.

Installed for this: torchtune 0.6.1 and its pure-Python companions with --no-deps into a private folder
(tests/stages/test_tune_config.py), on this venv's torch 2.13 CPU; lm_eval 0.4.8 and datasets are the venv's.
torchao 0.10.0's C++ ops (_C.abi3.so) are built for torch 2.7 and do not load on torch 2.13 ("OSError: Could not
load this library"; torchao/__init__.py skips them with a debug log): the CPU paths run here (8da4w quantization,
LoRA/full training) are pure PyTorch and do not need them. int4 weight-only (4w) needs CUDA whatever the torch:
`aten::_convert_weight_to_int4pack` has no CPU kernel, so that quantizer is not run here (the family refuses it
on a CPU at validate time).
"""

from __future__ import annotations

import base64
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import loader, plan
from tests.conftest import REPO
from tests.stages.test_tune_config import torchtune_site  # noqa: F401  (the fixture)

DATA = REPO / "examples" / "data" / "dolly-tiny.jsonl"
EXAMPLE = REPO / "examples" / "llama3-70b-torchtune-p5.yaml"
# torchtune/models/llama3/_tokenizer.py SPECIAL_TOKENS: the names Llama3Tokenizer looks up.
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
           "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
           "<|eot_id|>", "<|python_tag|>", "<|image|>", "<|video|>"]
VOCAB = 512
SIZES = {"vocab_size": VOCAB, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "embed_dim": 64,
         "intermediate_dim": 128, "max_seq_len": 512}


def tiktoken_file(path: Path, text: str, size: int) -> None:
    """A valid tiktoken BPE file (base64 token, rank per line): the 256 bytes, then the most frequent byte pairs
    of the text, each made of two lower-ranked tokens as BPE requires."""
    ranks = {bytes([i]): i for i in range(256)}
    pairs: collections.Counter[bytes] = collections.Counter()
    for word in text.split():
        data = f" {word}".encode()
        pairs.update(data[i:i + 2] for i in range(len(data) - 1))
    for pair, _ in pairs.most_common(size - 256):
        ranks[pair] = len(ranks)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))


@pytest.fixture(scope="module")
def tiny_llama3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama 3 model directory as `tune download` leaves it: HF safetensors shards + config.json, and
    original/tokenizer.model; tokenizer.json carries the special tokens (ids after the BPE ranks)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = tmp_path_factory.mktemp("tiny-llama3") / "model"
    (model / "original").mkdir(parents=True)
    ranks = VOCAB - len(SPECIAL)
    tiktoken_file(model / "original" / "tokenizer.model", DATA.read_text(), ranks)
    added = [{"id": ranks + i, "content": token, "special": True} for i, token in enumerate(SPECIAL)]
    (model / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=SIZES["embed_dim"], intermediate_size=SIZES["intermediate_dim"],
                         num_hidden_layers=SIZES["num_layers"], num_attention_heads=SIZES["num_heads"],
                         num_key_value_heads=SIZES["num_kv_heads"], max_position_embeddings=SIZES["max_seq_len"],
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         bos_token_id=ranks, eos_token_id=ranks + 1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model, max_shard_size="100KB")
    assert len(list(model.glob("model-*-of-*.safetensors"))) > 1  # a sharded set, as the 70B download is
    return model


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped Dolly rows in the Alpaca layout torchtune's alpaca_dataset reads (instruction/input/output)."""
    path = tmp_path_factory.mktemp("data") / "alpaca.jsonl"
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    path.write_text("".join(json.dumps({"instruction": r["instruction"], "input": r["context"],
                                        "output": r["response"]}) + "\n" for r in rows))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render(root: Path, nproc: int) -> dict[str, str]:
    """The seed 002 example with its settings shrunk, on the local cluster, rendered by the real plan."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data.update(name="tt-cpu", cluster="local", workdir=str(root / "work"))
    data.pop("venv")
    data.pop("secrets")
    data["settings"].update(model="llama3_8b", nproc_per_node=nproc, max_seq_len=256, batch_size=2,
                            max_steps_per_epoch=2, warmup_steps=1, rdzv_port=free_port())
    for stage in data["stages"]:
        stage.pop("resources", None)
        if stage["kind"] in ("evaluate", "quantize", "generate"):
            stage["params"]["device"] = "cpu"
    evaluate = next(s for s in data["stages"] if s["kind"] == "evaluate")
    evaluate["params"].update(tasks=["dolly_tiny"], include_path=str(REPO / "examples" / "lm-eval-tasks"),
                              limit=4, batch_size=2, min_score=0.0)
    next(s for s in data["stages"] if s["kind"] == "generate")["params"].update(max_new_tokens=8)
    # torchao skips a weight whose input size is not a multiple of the group size (the tiny model's is 64).
    next(s for s in data["stages"] if s["kind"] == "quantize")["params"].update(groupsize=32)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return {s.name: s.script for s in plan.build(loader.load(path)).stages}


def run_stage(root: Path, name: str, script: str, site: Path, overrides: dict[str, Any], **extra_env: str) -> str:
    """Run a rendered stage script as the job wrapper would (PIPELINE_RUN_DIR, the stage programs on the path),
    with `tune` = torchtune's CLI plus the tiny-model overrides. Returns its output."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    tune = bin_dir / "tune"
    tune.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -m tests.stages.tune_cpu \"$@\"\n")
    tune.chmod(0o755)
    (root / "scripts").mkdir(exist_ok=True)
    path = root / "scripts" / f"{name}.sh"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PIPELINE_"))}
    env.update(PIPELINE_RUN_DIR=str(root / "run"), PIPELINE_STAGE=name, PIPELINE_STAGES_PATH=str(REPO),
               PYTHONPATH=str(site), PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}",
               TUNE_CPU_OVERRIDES=json.dumps([f"{k}={v}" for k, v in overrides.items()]), OMP_NUM_THREADS="1", **extra_env)
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=900, cwd=root,
                         check=False)
    assert out.returncode == 0, f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout + out.stderr


def model_overrides(model: Path, builder: str) -> dict[str, Any]:
    sizes = {f"model.{k}": v for k, v in SIZES.items()}
    return {"model._component_": f"torchtune.models.llama3.{builder}", **sizes,
            "tokenizer.special_tokens_path": model / "tokenizer.json"}


def finetune_overrides(model: Path, data: Path, builder: str) -> dict[str, Any]:
    return {**model_overrides(model, builder), "device": "cpu", "fsdp_cpu_offload": False,
            "log_peak_memory_stats": False, "dataset.source": "json", "dataset.data_files": data,
            "dataset.split": "train"}


def workdir_with_model(root: Path, model: Path) -> Path:
    work = root / "work"
    shutil.copytree(model, work / "model")
    return work


def losses(work: Path, method: str) -> list[float]:
    """The per-step losses torchtune's DiskLogger wrote (log_<ts>.txt: `Step N | loss:X lr:...`)."""
    logs = list((work / "tuned" / method / "logs").glob("log_*.txt"))
    assert len(logs) == 1, logs
    return [float(part.split(":", 1)[1]) for line in logs[0].read_text().splitlines()
            for part in line.split() if part.startswith("loss:")]


def assert_tuned_epoch(work: Path, method: str, base: Path) -> Path:
    from safetensors.torch import load_file

    epoch = work / "tuned" / method / "epoch_0"
    shards = sorted(epoch.glob("model-*-of-*.safetensors"))
    assert shards and (epoch / "config.json").is_file(), sorted(p.name for p in epoch.iterdir())
    tuned = {k: v for s in shards for k, v in load_file(s).items()}
    original = {k: v for s in sorted(base.glob("model-*.safetensors")) for k, v in load_file(s).items()}
    assert tuned.keys() == original.keys()  # saved back in the HF layout the checkpointer read
    assert any(not tuned[k].equal(original[k]) for k in tuned), "training changed no weight"
    assert len(losses(work, method)) == 2  # max_steps_per_epoch
    return epoch


@pytest.fixture(scope="module")
def lora_single(torchtune_site: Path, tiny_llama3: Path, alpaca: Path,  # noqa: F811
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The LoRA finetune on one process: the family renders lora_finetune_single_device for nproc_per_node 1."""
    root = tmp_path_factory.mktemp("tt-single")
    scripts = render(root, nproc=1)
    workdir_with_model(root, tiny_llama3)
    run_stage(root, "lora", scripts["lora"], torchtune_site, finetune_overrides(tiny_llama3, alpaca, "lora_llama3"))
    return root, scripts


def test_lora_single_device_trains_and_saves_the_adapter(lora_single, tiny_llama3):
    root, scripts = lora_single
    assert "tune run lora_finetune_single_device --config" in scripts["lora"] and "--rdzv" not in scripts["lora"]
    epoch = assert_tuned_epoch(root / "work", "lora", tiny_llama3)
    assert (epoch / "adapter_config.json").is_file()
    import torch

    adapter = torch.load(epoch / "adapter_model.pt", weights_only=True)
    assert adapter and all("lora_a" in k or "lora_b" in k for k in adapter), sorted(adapter)[:4]
    assert {k.split(".")[-3] for k in adapter} == {"q_proj", "k_proj", "v_proj"}  # the spec's attn_modules


def test_full_single_device_trains(torchtune_site, tiny_llama3, alpaca, tmp_path):  # noqa: F811
    scripts = render(tmp_path, nproc=1)
    work = workdir_with_model(tmp_path, tiny_llama3)
    assert "tune run full_finetune_single_device --config" in scripts["full"]
    run_stage(tmp_path, "full", scripts["full"], torchtune_site, finetune_overrides(tiny_llama3, alpaca, "llama3"))
    assert_tuned_epoch(work, "full", tiny_llama3)


@pytest.mark.parametrize("method,builder", [("lora", "lora_llama3"), ("full", "llama3")])
def test_distributed_recipe_on_two_gloo_ranks(torchtune_site, tiny_llama3, alpaca, tmp_path, method,  # noqa: F811
                                              builder):
    """The rendered launcher line itself (the shared torchrun macro, is_host included) starts 2 ranks."""
    scripts = render(tmp_path, nproc=2)
    assert f"--rdzv_conf=is_host=$(( ${{SLURM_NODEID:-0}} == 0 )) \\\n  {method}_finetune_distributed" in scripts[method]
    work = workdir_with_model(tmp_path, tiny_llama3)
    out = run_stage(tmp_path, method, scripts[method], torchtune_site,
                    finetune_overrides(tiny_llama3, alpaca, builder))
    assert "Running with torchrun" in out
    assert_tuned_epoch(work, method, tiny_llama3)


def hub_cache_with_gpt2(root: Path, model: Path) -> Path:
    """Stand-in for the Hub: torchtune 0.6.1's _LLMEvalWrapper calls lm_eval's `HFLM.__init__(pretrained="gpt2")`
    (recipes/eleuther_eval.py line 311, "TODO: Remove this init function so we don't load in extraneous stuff"),
    which loads GPT-2's config, tokenizer and weights through transformers before torchtune swaps in its own
    model. The Hub is unreachable here, so an offline HF cache holds a small model under the repo id `gpt2`."""
    cache = root / "hf-cache"
    revision = "0" * 40
    shutil.copytree(model, cache / "models--gpt2" / "snapshots" / revision)
    (cache / "models--gpt2" / "refs").mkdir()
    (cache / "models--gpt2" / "refs" / "main").write_text(revision)
    return cache


def test_eleuther_eval_on_a_local_task_writes_metrics(lora_single, torchtune_site, tiny_llama3, tiny):  # noqa: F811
    root, scripts = lora_single
    cache = hub_cache_with_gpt2(root, tiny)
    run_stage(root, "evaluate", scripts["evaluate"], torchtune_site, model_overrides(tiny_llama3, "llama3"),
              HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    metrics = json.loads((root / "work" / "reports" / "evaluate" / "metrics.json").read_text())
    assert set(metrics) == {"dolly_tiny"} and {"acc", "perplexity"} <= set(metrics["dolly_tiny"]), metrics
    assert 0 <= metrics["dolly_tiny"]["acc"] <= 1 and metrics["dolly_tiny"]["perplexity"] > 1


def test_quantize_writes_the_int4_checkpoint(lora_single, torchtune_site, tiny_llama3):  # noqa: F811
    """Fails on the {filename_format, max_filename} checkpoint_files: recipes/quantize.py indexes [0].
    8da4w, the quantizer that runs on a CPU (4w's int4 packing has no CPU kernel: test_torchtune_family)."""
    root, scripts = lora_single
    run_stage(root, "quantize", scripts["quantize"], torchtune_site, model_overrides(tiny_llama3, "llama3"))
    out = root / "work" / "quantized" / "lora"
    first = min(tiny_llama3.glob("model-*-of-*.safetensors")).name.split(".")[0]
    files = sorted(p.name for p in out.glob("*-8da4w.pt"))
    assert files == [f"{first}-8da4w.pt"], sorted(p.name for p in out.iterdir())  # named after checkpoint_files[0]
    # Its linear weights are torchao's quantized tensors (unpickling them needs torchao: the private site).
    probe = ("import sys, torch; s = torch.load(sys.argv[1], weights_only=False); "
             "print(type(s['layers.0.attn.q_proj.weight']).__name__, type(s['tok_embeddings.weight']).__name__)")
    kinds = subprocess.run([sys.executable, "-c", probe, str(out / files[0])], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(torchtune_site)}, timeout=300, check=True)
    assert kinds.stdout.split() == ["LinearActivationQuantizedTensor", "Tensor"], kinds


def test_generate_writes_the_generated_text(lora_single, torchtune_site, tiny_llama3):  # noqa: F811
    root, scripts = lora_single
    run_stage(root, "generate", scripts["generate"], torchtune_site, model_overrides(tiny_llama3, "llama3"))
    text = (root / "work" / "reports" / "generate" / "generated.txt").read_text()
    assert "Hello, my name is" in text and len(text.strip()) > len("Hello, my name is"), text
