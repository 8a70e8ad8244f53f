"""Issue 13 item 4 on the real test cluster: slurmctld killed -9 mid-chain and restarted from an older state save.

The file name sorts last among the Slurm tests on purpose: reloading an older state save rewinds the session
cluster's job ids, so a job submitted afterwards can share an id with an earlier one in accounting. No Slurm test
runs after this one (pytest collects files in path order; tests/stages and tests/unit never use the cluster)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator import daemons, devcluster, state, status
from orchestrator.scheduler.slurm import SlurmScheduler
from orchestrator.spec import ClusterProfile
from orchestrator.states import JobState
from tests.helpers import latest_run, run_cli, wait_accounted, wait_state
from tests.slurm.test_reliability_slurm import CLUSTER, _cli, _status_lines, record_figure

pytestmark = pytest.mark.slurm
S = JobState


def _squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T|%r|%N"], capture_output=True,
                          text=True).stdout.strip()


def _kill9_controller(cluster: devcluster.DevCluster) -> None:
    pid = int((cluster.workdir / "run" / "slurmctld.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not daemons.gone(pid):
        assert time.monotonic() < deadline, "slurmctld survived SIGKILL"
        time.sleep(0.1)


def _wait_line(run_dir: Path, stage: str, words: tuple[str, ...], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while not all(w in (lines := _status_lines(run_dir))[stage] for w in words):
        assert time.monotonic() < deadline, lines
        time.sleep(0.5)
    return lines


def test_controller_crash_older_state_hold_and_drain(slurm_cluster, write_spec):
    """Each step creates a real condition of the issue's crash:

    1. slurmctld is killed with SIGKILL while stage b runs (a finished): squeue fails, sacct answers. Status must
       say in one warning line that the controller did not answer (old code: silent, accounting alone).
    2. It is restarted (no -c) from the state save copied while a was still running: Slurm reloads an older
       saved state, so the controller's view of a (and b) is older than accounting's.
       What the copy holds depends on when slurmctld last saved (seen: a still held by our submit, b and c
       absent, and the next sbatch reusing b's job id): for any such save, status must agree with squeue for
       every stage or say that they disagree, with one warning line (old code: a COMPLETED, silent).
    3. `scontrol requeuehold` on a running job: what the controller does to a job whose launch failed after the restart
       ("launch failed requeued held"); `scontrol update ... state=drain reason="Duplicate jobid"` on the node it
       ran on: what it does to a node that reports a job it does not know. Status must show it HELD with Slurm's
       reason and `scontrol release <id>`, and the drained node with its reason (old: "waiting for its
       dependencies", no node).
    4. `pipeline submit --resume` releases the hold and says so; the job completes once the node is resumed.
    Steps 3-4 run on a fresh one-stage run, as the reloaded chain's own jobs are whatever the old save held.
    """
    path = write_spec(f"""name: crash
cluster: {CLUSTER}
stages:
  - {{name: a, kind: command, run: "sleep 4"}}
  - {{name: b, kind: command, run: "sleep 15"}}
  - {{name: c, kind: command, run: "true"}}
""")
    started = time.monotonic()
    run_cli("submit", str(path))
    run_dir = latest_run()
    saved_dir = slurm_cluster.workdir / "state"
    older = slurm_cluster.workdir / "state.older"
    wait_state(run_dir, "a", S.RUNNING, timeout=30)
    time.sleep(1.5)  # slurmctld saves job state within a second of a change (StateSaveLocation)
    shutil.rmtree(older, ignore_errors=True)
    shutil.copytree(saved_dir, older)
    wait_state(run_dir, "b", S.RUNNING, timeout=40)
    ids = {n: s.current.job_id for n, s in state.Store(run_dir).read().stages.items()}
    assert wait_accounted([ids["a"]], timeout=30) == {ids["a"]: "COMPLETED"}  # b's start need not be: status keeps
    # the RUNNING it saw (merge._not_backwards); the drill is about an outage after accounting has a's end

    _kill9_controller(slurm_cluster)  # step 1
    during = _status_lines(run_dir)
    print("during outage:", during)
    assert "the controller (slurmctld) did not answer" in during["warning"]
    assert during["warning"].count("\n") == 0 and "COMPLETED" in during["a"] and "RUNNING" in during["b"]

    shutil.rmtree(saved_dir)  # step 2
    shutil.copytree(older, saved_dir)
    devcluster.restart_controller(slurm_cluster)
    first = _status_lines(run_dir)
    ctld_a = _squeue(ids["a"])
    print("after the reload:", ctld_a, first)
    # Accounting has a COMPLETED; the reloaded controller has it from before it ended (queued, held or running
    # again) or not at all. Either way status must not show a plain COMPLETED with no word.
    if ctld_a.split("|")[0] in ("PENDING", "RUNNING", "REQUEUE_HOLD"):
        assert "sources disagree" in first["a"] and "COMPLETED" not in first["a"][:35], first
        assert "disagree about stage(s) a" in first["warning"] and first["warning"].count("\n") == 0, first
    # Wherever the controller queues or runs a stage's job, status shows that or says the sources disagree.
    ctld = {n: _squeue(ids[n]).split("|")[0].replace("REQUEUE_HOLD", "PENDING") for n in ("a", "b", "c")}
    agreed = all("sources disagree" in first[n] or ctld[n] in first[n].replace("HELD", "PENDING")
                 for n in ctld if ctld[n] in ("PENDING", "RUNNING"))
    assert agreed, (ctld, first)
    reload_warning = first["warning"]

    # Steps 3-4 on a fresh one-stage run: the held job and the drained node, deterministic.
    run_cli("submit", str(write_spec(f"""name: held
cluster: {CLUSTER}
stages:
  - {{name: t, kind: command, run: "sleep 8"}}
""", "held.yaml")))
    held_dir = latest_run()
    wait_state(held_dir, "t", S.RUNNING, timeout=30)
    job = state.Store(held_dir).read().stages["t"].current
    host = job.nodes
    subprocess.run(["scontrol", "requeuehold", job.job_id], check=True)
    subprocess.run(["scontrol", "update", f"nodename={host}", "state=drain", "reason=Duplicate jobid"], check=True)
    try:
        held = _wait_line(held_dir, "t", (" HELD ",), timeout=20)
        print("held:", held["t"], _squeue(job.job_id))
        assert f"release it: scontrol release {job.job_id}" in held["t"] and "waiting for its dep" not in held["t"]
        # sinfo says "draining" while another job (an earlier test's) still runs on the node, "drained" once idle
        assert re.search(rf"node {host} drain(ed|ing): Duplicate jobid", held["t"]), held
        scheduler = SlurmScheduler(None, ClusterProfile(name="dev"))
        status.refresh([held_dir], {"slurm:auto": scheduler})
        calls_held = scheduler.query_calls  # sacct + squeue + sinfo (a held job: its nodes are looked at)
        resumed = _cli("submit", "--resume", held_dir.name)
        assert resumed.returncode == 0 and f"stage t: released job {job.job_id} (held:" in resumed.stderr, resumed
        assert not _squeue(job.job_id).startswith("PENDING|JobHeld")
    finally:
        subprocess.run(["scontrol", "update", f"nodename={host}", "state=resume"], check=True)
    # released, the requeued job first waits out its BeginTime (the cluster's cred_expire, 30 s), then runs 8 s
    done = _wait_line(held_dir, "t", (" COMPLETED ",), timeout=120)
    scheduler = SlurmScheduler(None, ClusterProfile(name="dev"))
    status.refresh([run_dir], {"slurm:auto": scheduler})
    calls_live = scheduler.query_calls
    _cli("cancel", run_dir.name)  # the reloaded a is held for good: leave no job behind for other tests
    shutil.rmtree(older, ignore_errors=True)
    elapsed = round(time.monotonic() - started)
    print("done:", done["t"], "calls", calls_held, calls_live, "elapsed", elapsed)
    record_figure("controller_crash", {"outage_warning": during["warning"], "after_reload_a": first["a"][18:].strip(),
                                       "after_reload_squeue_a": ctld_a, "reload_warning": reload_warning,
                                       "held_note": held["t"][76:].strip(), "resume_said": resumed.stderr.strip(),
                                       "queries_with_a_held_job": calls_held, "queries_after_reload": calls_live,
                                       "seconds": elapsed})
