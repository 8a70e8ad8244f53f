"""The dev cluster itself: real daemons, distinct nodes, accounting on and off, a clean teardown."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator import daemons, devcluster
from tests.helpers import wait_accounted

pytestmark = pytest.mark.slurm


def run(*argv: str, conf=None) -> subprocess.CompletedProcess[str]:
    env = None if conf is None else {"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    return subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=60)


def test_four_idle_nodes_and_a_two_node_job(slurm_cluster):
    nodes = run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split("\n")
    assert sorted(line.split()[0] for line in nodes if line) == ["dev1", "dev2", "dev3", "dev4"]
    out = run("srun", "-N2", "--ntasks-per-node=1", "bash", "-c", "echo $SLURMD_NODENAME")
    assert out.returncode == 0 and len(set(out.stdout.split())) == 2


def test_sacct_with_and_without_accounting(slurm_cluster):
    job = run("sbatch", "--parsable", "--wait", "--wrap", "true").stdout.strip()
    # sbatch --wait returns when the controller says the job ended; slurmdbd hears of it a moment later (in CI
    # under load, seconds): wait for accounting to record the end, then check what it says.
    assert wait_accounted([job]) == {job: "COMPLETED"}
    acct = run("sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State", "-j", job)
    assert f"{job}|COMPLETED" in acct.stdout
    off = run("sacct", "-X", "-n", "-j", job, conf=slurm_cluster.conf_without_accounting)
    assert off.returncode != 0 and "accounting storage is disabled" in (off.stdout + off.stderr).lower()
    assert run("squeue", "-h", conf=slurm_cluster.conf_without_accounting).returncode == 0


def test_down_leaves_no_daemon(tmp_path, slurm_cluster):
    cluster = devcluster.up(tmp_path / "second", nodes=2)
    assert run("sinfo", "-h", "-o", "%D", conf=cluster.conf).stdout.strip() == "2"
    pids = [int(p.read_text()) for p in (cluster.workdir / "run").glob("*.pid")]
    assert len(pids) >= 6  # munged, mariadbd, slurmdbd, slurmctld, 2 x slurmd (+ the daemons' own pid files)
    devcluster.down(cluster.workdir)
    alive = [pid for pid in pids if not daemons.gone(pid)]
    assert alive == []
    devcluster.down(cluster.workdir)  # safe twice
