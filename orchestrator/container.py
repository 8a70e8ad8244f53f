"""Containers: a stage's tasks run in an enroot image through pyxis's srun flags (seed 002's sbatch files:
`srun --container-image $ENROOT_IMAGE --container-mounts $CONTAINER_MOUNT ...`, awsome-distributed-training
3.test_cases/torchtune/slurm/tutorials/e2e-llama3-70b-development).

Inside the container only the mounted paths exist, so validation checks that the mounts cover every path a
stage reads or writes before anything is queued: the workdir, the run directory, the venv, the pipeline's stage
programs, and every absolute path in the settings and params (model and data paths).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import orchestrator
from orchestrator import yamlsrc
from orchestrator.spec import ClusterProfile, Container, Pipeline
from orchestrator.yamlsrc import error_at


def flags(container: Container | None) -> list[str]:
    """pyxis's srun flags (NVIDIA/pyxis README: --container-image, --container-mounts, --container-workdir)."""
    if container is None:
        return []
    out = [f"--container-image={container.image}"]
    if container.mounts:
        out.append(f"--container-mounts={','.join(container.mounts)}")
    if container.workdir:
        out.append(f"--container-workdir={container.workdir}")
    return out


def destination(mount: str) -> str:
    parts = mount.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def covered(path: str, mounts: list[str]) -> bool:
    for dst in (destination(m).rstrip("/") or "/" for m in mounts):
        if dst == "/" or path == dst or path.startswith(dst + "/"):
            return True
    return False


def _absolute_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str) and value.startswith("/"):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _absolute_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _absolute_strings(item)


def needed(pipeline: Pipeline, cluster: ClusterProfile, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, what it is) for every path a stage in a container reads or writes."""
    paths = [(os.path.expanduser(cluster.run_root or ""), "the run directory (cluster run_root)"),
             (orchestrator.STAGES_PATH, "pipeline's stage programs (python -m stages)")]
    if pipeline.workdir:
        paths.append((os.path.expanduser(pipeline.workdir), "workdir"))
    if pipeline.venv:
        paths.append((os.path.expanduser(pipeline.venv), "venv"))
    paths += [(p, "a path in settings") for p in _absolute_strings(pipeline.settings)]
    paths += [(p, "a path in params") for p in _absolute_strings(params)]
    return paths


def check(source: yamlsrc.Located, pipeline: Pipeline, cluster: ClusterProfile) -> None:
    """Every stage with a container: a Slurm cluster, an image, and mounts covering what the stage touches."""
    for index, stage in enumerate(pipeline.stages):
        container = pipeline.container_of(stage)
        if container is None:
            continue
        where: yamlsrc.KeyPath = ("stages", index, "container") if stage.container else ("container",)
        if cluster.scheduler != "slurm":
            raise error_at(source, where, f"stage {stage.name!r} runs in a container, which needs Slurm with pyxis "
                           f"(cluster {cluster.name!r} is {cluster.scheduler})", "use a Slurm cluster or a venv")
        if not container.image:
            raise error_at(source, where, f"stage {stage.name!r}: a container needs an image", "add image: ...")
        if not cluster.run_root:
            raise error_at(source, where, f"stage {stage.name!r} runs in a container, so the run directory must be "
                           "on storage mounted into it", f"set run_root in cluster profile {cluster.name!r}")
        mounts = container.mounts or []
        for path, what in needed(pipeline, cluster, stage.params):
            if not covered(path, mounts):
                raise error_at(source, where + ("mounts",),
                               f"stage {stage.name!r}: the container does not mount {path} ({what}), which the "
                               f"stage reads or writes (mounts: {', '.join(mounts) or 'none'})",
                               f"add a mount that contains it, e.g. {'/' + path.strip('/').split('/')[0]}")
