"""consolidate: one adapter from the newest completed checkpoint (or final/), found at run time.

hf: copies the PEFT adapter (adapter_config.json + adapter_model.safetensors) and checks it has tensors; a
    checkpoint written by FSDP (checkpoint-N/dcp/: one torch.distributed.checkpoint shard per rank) is gathered
    in this one process into a single adapter_model.safetensors with PEFT's key names.
neuron: runs `optimum-cli neuron consolidate` on the newest checkpoint, locating the adapter per optimum-neuron
version (0.4.x: checkpoint-N/adapter_default/, 0.1.x: checkpoint-N/adapter_shards) — stages.md defects 1, 14.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from stages import sharding
from stages.common import StageError, entry, log, newest_checkpoint


def pick(checkpoints: Path) -> Path:
    final = checkpoints / "final"
    if (final / "adapter_config.json").is_file():
        return final
    newest = newest_checkpoint(checkpoints)
    if newest is None:
        raise StageError(f"{checkpoints}: no final/ and no completed checkpoint-<N>/ (with a `done` marker)",
                         "did the finetune stage finish? `pipeline logs RUN finetune`")
    return newest


def check_adapter(directory: Path) -> int:
    from safetensors import safe_open

    weights = directory / "adapter_model.safetensors"
    if not (directory / "adapter_config.json").is_file() or not weights.is_file():
        raise StageError(f"{directory}: adapter_config.json or adapter_model.safetensors is missing")
    with safe_open(str(weights), "pt") as handle:
        count = len(list(handle.keys()))
    if count == 0:
        raise StageError(f"{weights} holds no tensors")
    return count


def from_dcp(directory: Path, output: Path) -> int:
    """FSDP shards -> one PEFT adapter. The live model's keys carry the adapter name
    (`...q_proj.lora_A.default.weight`); a saved PEFT adapter's do not (`...q_proj.lora_A.weight`)."""
    from safetensors.torch import save_file

    config = directory / "adapter_config.json"
    if not config.is_file():
        raise StageError(f"{directory}: a sharded checkpoint without adapter_config.json is a full fine-tune",
                         "full fine-tunes need no consolidation: use the finetune stage's final/ model")
    tensors = {key.replace(".default.", "."): value.contiguous() for key, value in sharding.gather_dcp(directory).items()
               if "lora_" in key}
    if not tensors:
        raise StageError(f"{directory}: the sharded checkpoint holds no LoRA tensors")
    output.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(output / "adapter_model.safetensors"), metadata={"format": "pt"})
    shutil.copy2(config, output / "adapter_config.json")
    return len(tensors)


def hf(checkpoints: Path, output: Path) -> None:
    source = pick(checkpoints)
    if (source / sharding.DCP_DIR).is_dir() and not (source / "adapter_config.json").is_file():
        count = from_dcp(source / sharding.DCP_DIR, output)
        log(f"adapter from {source.name} ({count} tensors gathered from FSDP shards) -> {output}")
        check_adapter(output)
        return
    adapter = source if (source / "adapter_config.json").is_file() else source / "adapter"
    check_adapter(adapter)
    output.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, output / name)
    log(f"adapter from {source.name}: {check_adapter(output)} tensors -> {output}")


def neuron(checkpoints: Path, output: Path) -> None:
    source = newest_checkpoint(checkpoints)
    if source is None:
        raise StageError(f"{checkpoints}: no completed checkpoint-<N>/ with a `done` marker")
    cli = shutil.which("optimum-cli")
    if cli is None:
        raise StageError("optimum-cli is not on PATH: optimum-neuron is not installed in this environment",
                         "the create_env stage installs it; is the stage's venv activated?")
    if (source / "adapter_default").is_dir():  # optimum-neuron 0.4.x layout
        target = source / "adapter_default"
    elif (source / "adapter_shards").is_dir():  # 0.1.x layout
        target = source
    else:
        raise StageError(f"{source}: neither adapter_default/ (optimum-neuron 0.4) nor adapter_shards/ (0.1)")
    done = subprocess.run([cli, "neuron", "consolidate", str(target), str(output), "-f", "safetensors"])
    if done.returncode != 0:
        raise StageError(f"optimum-cli neuron consolidate exited {done.returncode}")
    # optimum-cli prints exceptions and still exits 0 (stages.md 2.4): verify the output ourselves.
    config = target / "adapter_config.json"
    if config.is_file() and not (output / "adapter_config.json").exists():
        shutil.copy2(config, output / "adapter_config.json")
    check_adapter(output)


@entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages consolidate")
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--family", choices=["hf", "neuron"], default="hf")
    args = parser.parse_args(argv)
    (hf if args.family == "hf" else neuron)(args.checkpoints, args.output)
    return 0
