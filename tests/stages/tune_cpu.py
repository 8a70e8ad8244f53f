"""The `tune` command of the torchtune recipe tests: torchtune 0.6.1's own CLI, with two test-only additions.

1. `tune run ...` gets the overrides in $TUNE_CPU_OVERRIDES (a JSON list of key=value) appended after the
   rendered `--config FILE`: the tiny model's builder and sizes, the CPU, the local data file. Everything else
   is the config the family rendered and `tune-config` finished.
2. The two distributed recipes are started through this module (`tune run [torchrun flags]
   tests/stages/tune_cpu.py`, torchtune's custom-recipe form) which runs the real recipe file after replacing the
   three things of it that exist only with CUDA, which this CPU-only torch build lacks (a stand-in, not the
   recipe's logic):
   - lora_finetune_distributed.py line 918 `init_process_group("cuda:nccl,cpu:gloo")`: NCCL is not built into
     a CPU torch ("Distributed package doesn't have NCCL built in") -> the same call with gloo;
   - full_finetune_distributed.py line 628 `training.get_memory_stats(device)` on rank 0, unconditionally,
     which raises "Logging memory stats is not supported on CPU devices" -> zeros on CPU;
   - `training.cleanup_before_training()` calls `torch.cpu.empty_cache` / `reset_peak_memory_stats`, which
     torch.cpu does not have -> its gc.collect() only.
   FSDP2 sharding, gloo collectives, checkpoint gathering and saving on rank 0 are the recipe's own.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
from typing import Any

DISTRIBUTED = ("lora_finetune_distributed", "full_finetune_distributed")
SELF = "tests/stages/tune_cpu.py"  # relative: tune run turns a custom recipe path into a module dot path


def cli(argv: list[str]) -> list[str]:
    """The argv for torchtune's CLI: overrides appended to `tune run`, distributed recipes through this file."""
    if argv[:1] != ["run"]:
        return argv
    args = list(argv)
    index = next(i for i, a in enumerate(args) if i > 0 and not a.startswith("-"))
    if args[index] in DISTRIBUTED:
        os.environ["TUNE_CPU_RECIPE"] = args[index]
        args[index] = SELF
    return args + json.loads(os.environ.get("TUNE_CPU_OVERRIDES", "[]"))


def run_recipe(name: str) -> None:
    import torch.distributed as dist
    import torchtune
    from torchtune import training

    real_init = dist.init_process_group
    real_stats = training.get_memory_stats

    def init_process_group(backend: Any = None, *args: Any, **kwargs: Any) -> Any:
        return real_init("gloo", *args, **kwargs)

    def get_memory_stats(device: Any, reset_stats: bool = True) -> dict[str, float]:
        if device.type == "cpu":
            return dict.fromkeys(("peak_memory_active", "peak_memory_alloc", "peak_memory_reserved"), 0.0)
        return dict(real_stats(device, reset_stats))

    dist.init_process_group = init_process_group
    training.get_memory_stats = get_memory_stats
    training.cleanup_before_training = gc.collect
    # torchtune's ROOT (torchtune/_cli/run.py): the recipes folder is installed next to the package.
    path = os.path.join(os.path.dirname(os.path.dirname(torchtune.__file__)), "recipes", f"{name}.py")
    sys.argv[0] = path
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    recipe = os.environ.get("TUNE_CPU_RECIPE")
    if recipe and sys.argv[1:2] == ["--config"]:
        run_recipe(recipe)
    else:
        from torchtune._cli.tune import main

        sys.argv = ["tune", *cli(sys.argv[1:])]
        main()
