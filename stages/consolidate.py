"""consolidate: one adapter from the newest completed checkpoint (or final/), found at run time.

hf: copies the PEFT adapter (adapter_config.json + adapter_model.safetensors) and checks it has tensors; a
    checkpoint written by FSDP (checkpoint-N/dcp/: one torch.distributed.checkpoint shard per rank) is gathered
    in this one process into a single adapter_model.safetensors with PEFT's key names.
neuron: runs `optimum-cli neuron consolidate` on final/ or the newest checkpoint-N whose NxD `done` marker exists
(0.4.5: checkpoint-N/adapter_default/adapter_shards/done, 0.1.0: checkpoint-N/adapter_shards/done), passing the
checkpoint folder as upstream does, and adds the adapter config — stages.md defects 1, 14.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from stages import sharding
from stages.common import StageError, entry, log, newest_checkpoint
from stages.neuron_finetune import DONE_MARKERS


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
    tensors = sharding.peft_adapter_tensors(sharding.gather_dcp(directory))
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


def neuron_source(checkpoints: Path, sdk: str) -> Path:
    """final/ when its adapter save completed, else the newest checkpoint-<N> whose NxD `done` marker exists
    (stages.neuron_finetune.DONE_MARKERS: inside the adapter_shards tag folder, not at checkpoint-<N>/)."""
    marker = DONE_MARKERS[sdk]
    final = checkpoints / "final"
    if (final / marker).is_file():
        return final
    newest = newest_checkpoint(checkpoints, marker)
    if newest is None:
        raise StageError(f"{checkpoints}: no final/ and no checkpoint-<N>/ with a completed adapter save "
                         f"(<dir>/{marker})", "did the finetune stage finish? `pipeline logs RUN finetune`")
    return newest


def neuron(checkpoints: Path, output: Path, sdk: str = "gen2") -> None:
    source = neuron_source(checkpoints, sdk)
    cli = shutil.which("optimum-cli")
    if cli is None:
        raise StageError("optimum-cli is not on PATH: optimum-neuron is not installed in this environment",
                         "the create_env stage installs it; is the stage's venv activated?")
    # The checkpoint folder itself, as upstream passes it (optimum-neuron docs/source/training_tutorials/
    # finetune_llama.mdx; Gen 2 src/model_consolidation.py --input_dir checkpoint-N): 0.4.5's
    # consolidate_model_parallel_checkpoints_to_unified_checkpoint (models/training/checkpointing.py) consolidates
    # every adapter_<name>/adapter_shards/ in it and writes adapter `default` as <output>/adapter_model.safetensors.
    log(f"consolidating {source}")
    done = subprocess.run([cli, "neuron", "consolidate", str(source), str(output), "-f", "safetensors"])
    if done.returncode != 0:
        raise StageError(f"optimum-cli neuron consolidate exited {done.returncode}")
    # The CLI writes weights only; PEFT also needs the adapter's config (0.4.5: adapter_default/, 0.1: top level).
    config = source / ("adapter_default" if sdk == "gen2" else "") / "adapter_config.json"
    if not config.is_file():
        raise StageError(f"{config} is missing: the checkpoint has weights but no adapter config")
    shutil.copy2(config, output / "adapter_config.json")
    log(f"adapter from {source.name}: {check_adapter(output)} tensors -> {output}")


@entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages consolidate")
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--family", choices=["hf", "neuron"], default="hf")
    parser.add_argument("--neuron-sdk", choices=sorted(DONE_MARKERS), default="gen2",
                        help="the optimum-neuron generation that wrote the checkpoints (neuron family)")
    args = parser.parse_args(argv)
    if args.family == "hf":
        hf(args.checkpoints, args.output)
    else:
        neuron(args.checkpoints, args.output, args.neuron_sdk)
    return 0
