"""A stage's resources as sbatch options: the one mapping. `pipeline render` shows them as flags
(plan.resource_flags) and the Slurm backend submits the same list (scheduler/slurm_submit.py parameters)."""

from __future__ import annotations

from orchestrator.spec import Resources

# Resources' fields that are one sbatch option each, in the order render shows them
FIELDS = ("nodes", "ntasks_per_node", "cpus_per_task", "gpus_per_node", "gres", "mem", "time", "partition",
          "constraint", "account", "qos")


def options(res: Resources) -> list[tuple[str, str | int | bool]]:
    """(long option name, value), True for a bare flag. gpus_per_node 0 (a CPU stage on a GPU profile) means no
    GPU request at all rather than `--gpus-per-node=0`, which some Slurm versions reject; an extra `sbatch:`
    flag set to false is left out (sbatch has no `--flag=False`)."""
    found: list[tuple[str, str | int | bool]] = []
    for key in FIELDS:
        value = getattr(res, key)
        if value is not None and not (key == "gpus_per_node" and value == 0):
            found.append((key.replace("_", "-"), value))
    if res.exclusive:
        found.append(("exclusive", True))
    return found + [(k, v) for k, v in sorted(res.sbatch.items()) if v is not False]


def flags(res: Resources) -> list[str]:
    return [f"--{key}" if value is True else f"--{key}={value}" for key, value in options(res)]
