"""pytest plugin: the session's real Slurm cluster (orchestrator.devcluster), booted once, torn down at the end.

Skips only where Slurm cannot be installed (not root, no apt); with PIPELINE_REQUIRE_SLURM=1 (CI) even that
is a failure, so a skipped Slurm test can never pass as green.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import devcluster


def _cannot_install() -> str | None:
    if all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in devcluster.BINARIES):
        return None
    if os.geteuid() != 0:
        return "Slurm is not installed and the tests are not running as root"
    if shutil.which("apt-get") is None:
        return "Slurm is not installed and apt-get is not available"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[devcluster.DevCluster]:
    reason = _cannot_install()
    if reason:
        if os.environ.get("PIPELINE_REQUIRE_SLURM") == "1" or os.environ.get("CI") == "true":
            pytest.fail(f"Slurm tests required but: {reason}")
        pytest.skip(reason)
    given = os.environ.get("PIPELINE_TEST_SLURM_DIR")
    workdir = Path(given) if given else Path(tempfile.mkdtemp(prefix="pipeline-slurm-"))
    cluster = devcluster.up(workdir)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        if not given:
            devcluster.down(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
