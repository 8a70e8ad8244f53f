"""The checks every pipeline file gets past its models (orchestrator/loader.py runs them on the file, and
orchestrator/sweep.py on each sweep variant): families, kinds and params, containers, memory fit."""

from __future__ import annotations

from orchestrator import container, families, yamlsrc
from orchestrator.spec import ClusterProfile, Pipeline


def check(source: yamlsrc.Located, pipeline: Pipeline, cluster: ClusterProfile) -> list[str]:
    """Everything past the models: families, kinds and params, containers, memory fit (which refuses a stage
    that cannot fit and returns warnings). Run on the file and on every sweep variant."""
    families.validate(source, pipeline)
    container.check(source, pipeline, cluster)
    return families.check_fit(source, pipeline, cluster)
