"""Reliability drills on the real test cluster: kill -9 of submit, node loss, controller restart, secrets,
bad specs reaching no queue, and outputs checked after a zero exit."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import devcluster, state
from orchestrator.scheduler.slurm import SlurmScheduler
from orchestrator.spec import ClusterProfile
from orchestrator.states import JobState
from tests.conftest import REPO
from tests.helpers import latest_run, run_cli, wait_state, wait_terminal

pytestmark = pytest.mark.slurm
S = JobState
CLUSTER = '{name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:10:00"}}'
FIGURES = REPO / "docs" / "reliability-figures.json"


def record_figure(key: str, value: object) -> None:
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[key] = value
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def tagged(run_id: str, stages: list[str]) -> dict[str, list[str]]:
    return SlurmScheduler(None, ClusterProfile(name="dev")).find_tagged(Path("."), run_id, stages)


def test_submit_killed_at_many_points_resumes_without_duplicates(slurm_cluster, write_spec, pipeline_home):
    names = [f"s{i}" for i in range(7)]
    path = write_spec(f"name: crash\ncluster: {CLUSTER}\nstages:\n"
                      + "".join(f'  - {{name: {n}, kind: command, run: "true"}}\n' for n in names))
    kills, corrupt, duplicates, resumed = 0, 0, 0, 0
    for delay in [0.02 * i for i in range(1, 26)]:
        child = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "submit", str(path)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
    for run_dir in sorted((pipeline_home / "runs").iterdir()):
        if not (run_dir / "state.json").exists():
            # Killed before the state file existed: nothing may have been submitted for it.
            assert tagged(run_dir.name, names) == {}
            continue
        try:
            state.Store(run_dir).read()
        except Exception:
            corrupt += 1
            continue
        assert run_cli("submit", "--resume", str(run_dir)) == 0
        resumed += 1
        jobs = tagged(run_dir.name, names)
        duplicates += sum(len(ids) - 1 for ids in jobs.values())
        assert set(jobs) == set(names), f"{run_dir.name}: stages without a job: {set(names) - set(jobs)}"
        saved = state.Store(run_dir).read()
        assert all(saved.stages[n].current.job_id == jobs[n][0] for n in names)
    record_figure("submit_kill9", {"kills": kills, "runs_resumed": resumed, "corrupt": corrupt,
                                   "duplicates": duplicates})
    assert corrupt == 0 and duplicates == 0 and kills == 25


@pytest.mark.slow
def test_node_loss_requeues_and_resumes(slurm_cluster, write_spec):
    body = ('step=$(cat "$WORKDIR/step" 2>/dev/null || echo 0); echo "start at step $step on $SLURMD_NODENAME"; '
            'while [ "$step" -lt 40 ]; do step=$((step+1)); echo "$step" > "$WORKDIR/step"; sleep 0.5; done')
    path = write_spec(f"""name: nodeloss
cluster: {CLUSTER}
stages:
  - name: train
    kind: command
    retries: 2
    run: '{body}'
  - {{name: after, kind: command, run: "echo dependents still run"}}
""")
    run_cli("submit", str(path))
    run_dir = latest_run()
    wait_state(run_dir, "train", S.RUNNING)
    step_file = run_dir / "work" / "step"
    deadline = time.monotonic() + 60
    while not step_file.exists() or int(step_file.read_text() or 0) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    node = state.Store(run_dir).read().stages["train"].current.nodes
    assert node in slurm_cluster.nodes
    devcluster.kill_node(slurm_cluster, node)
    try:
        states = wait_terminal(run_dir, timeout=300)
    finally:
        devcluster.start_node(slurm_cluster, node)
    assert states == {"train": S.COMPLETED, "after": S.COMPLETED}
    records = sorted((run_dir / "records" / "train").glob("*.json"))
    assert len(records) == 2  # restart 0 (lost with the node) and restart 1 (requeued)
    log = next((run_dir / "logs").glob("train.*.log")).read_text()
    resumed_at = int(log.split("start at step ")[-1].split()[0])
    assert resumed_at >= 6  # continued from its checkpoint, did not restart at 0
    record_figure("node_loss", {"lost_node": node, "resumed_at_step": resumed_at, "restarts": len(records) - 1})


def test_controller_restart_mid_run(slurm_cluster, write_spec):
    path = write_spec(f"name: ctld\ncluster: {CLUSTER}\nstages:\n"
                      + "".join(f'  - {{name: s{i}, kind: command, run: "sleep 2"}}\n' for i in range(4)))
    run_cli("submit", str(path))
    run_dir = latest_run()
    wait_state(run_dir, "s1", S.RUNNING)
    devcluster.restart_controller(slurm_cluster)
    assert wait_terminal(run_dir, timeout=180) == {f"s{i}": S.COMPLETED for i in range(4)}
    record_figure("controller_restart", "run completed, status correct after slurmctld restart")


def test_secrets_reach_the_job_and_nothing_else(slurm_cluster, write_spec, tmp_path, monkeypatch):
    token = "hf_PLANTED" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    digest = hashlib.sha256(token.encode()).hexdigest()
    token_file = tmp_path / "hf-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    monkeypatch.setenv("HF_TOKEN", token)  # also exported in the submitter's shell
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", token)
    path = write_spec(f"""name: secret
cluster: {CLUSTER}
secrets: {{HF_TOKEN: {{file: {token_file}}}}}
stages:
  - {{name: a, kind: command, run: 'test "$(printf %s "$HF_TOKEN" | sha256sum | cut -d" " -f1)" = {digest}; echo "token=$HF_TOKEN"; env | grep -c AWS_SECRET || true'}}
""")
    run_cli("submit", str(path))
    run_dir = latest_run()
    assert wait_terminal(run_dir, timeout=120) == {"a": S.COMPLETED}
    job = state.Store(run_dir).read().stages["a"].current.job_id
    hits = [str(p) for root in (run_dir, slurm_cluster.workdir / "state", slurm_cluster.workdir / "spool",
                                slurm_cluster.workdir / "log")
            for p in root.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    shown = subprocess.run(["scontrol", "show", "job", "-d", job], capture_output=True, text=True).stdout
    assert hits == [] and token not in shown and "token=***" in next((run_dir / "logs").glob("a.*.log")).read_text()
    record_figure("secrets", {"planted": 1, "hits_in_run_dir_logs_scripts_slurm_state_and_scontrol": len(hits)})


def test_env_sourced_secret_under_a_plain_name_stays_out_of_the_job_record(slurm_cluster, write_spec, tmp_path,
                                                                           monkeypatch):
    """`{env: PLAINSRC}` reads the variable where the job runs; the submitter's value must not ride along in
    sbatch's --export=ALL (Slurm keeps a job's environment in its state save) just because the name looks
    harmless. Here the node does not set it, so the stage fails and says so."""
    token = "hf_PLAIN" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    monkeypatch.setenv("PLAINSRC", token)
    path = write_spec(f"""name: envsecret
cluster: {CLUSTER}
secrets: {{HF_TOKEN: {{env: PLAINSRC}}}}
stages:
  - {{name: a, kind: command, run: 'echo should-not-run'}}
""")
    run_cli("submit", str(path))
    run_dir = latest_run()
    assert wait_terminal(run_dir, timeout=120) == {"a": S.FAILED}
    log = next((run_dir / "logs").glob("a.*.log")).read_text()
    assert "PLAINSRC is not set in the job" in log and "should-not-run" not in log
    hits = [str(p) for root in (run_dir, slurm_cluster.workdir / "state", slurm_cluster.workdir / "spool")
            for p in root.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert hits == []


def test_bad_specs_reach_no_queue(slurm_cluster, write_spec, pipeline_home):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    corpus = sorted((REPO / "tests" / "badspecs").glob("*.yaml"))
    on_dev = [write_spec(f"name: bad\ncluster: {CLUSTER}\nstages:\n  - {{name: a, kind: command, run: echo}}\n"
                         f"  - {{name: b, kind: command, run: echo, {extra}}}\n", f"dev{i}.yaml")
              for i, extra in enumerate(["after: [zz]", "resources: {nodes: 0}", "resources: {time: soon}",
                                         "retries: -1", "resources: {sbatch: {hold: true}}"])]
    for path in [*corpus, *on_dev]:
        assert run_cli("submit", str(path)) == 1, path
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    acct = subprocess.run(["sacct", "-X", "-n", "-o", "JobName%60", "-S", start], capture_output=True,
                          text=True).stdout
    assert set(after) <= set(before) and "bad" not in acct
    assert not (pipeline_home / "index").exists()
    record_figure("bad_specs", {"files": len(corpus) + len(on_dev), "jobs_queued": 0})


def test_exit_zero_without_outputs_fails(slurm_cluster, write_spec):
    path = write_spec(f"""name: outs
cluster: {CLUSTER}
stages:
  - {{name: a, kind: command, run: "echo pretending", outputs: [model/config.json]}}
  - {{name: b, kind: command, run: "echo never"}}
""")
    run_cli("submit", str(path))
    run_dir = latest_run()
    assert wait_terminal(run_dir, timeout=120) == {"a": S.FAILED, "b": S.CANCELLED}
    assert "declared outputs missing" in state.Store(run_dir).read().stages["a"].current.reason


def test_hostile_values_on_slurm(slurm_cluster, write_spec, tmp_path):
    marker = tmp_path / "MARKER"
    evil = json.dumps(f"$(touch {marker}) `touch {marker}`; touch {marker} ' \" \n x")
    path = write_spec(f"""name: hostile
cluster: {CLUSTER}
env: {{EVIL: {evil}}}
stages:
  - {{name: a, kind: command, params: {{value: {evil}}}, run: 'printf "%s\\n" "$PARAM_VALUE" "$EVIL"'}}
""")
    run_cli("submit", str(path))
    run_dir = latest_run()
    assert wait_terminal(run_dir, timeout=120) == {"a": S.COMPLETED}
    assert not marker.exists()
    assert f"$(touch {marker})" in next((run_dir / "logs").glob("a.*.log")).read_text()


def test_twenty_status_processes_while_rerun_on_slurm(slurm_cluster, write_spec):
    path = write_spec(f"""name: busy
cluster: {CLUSTER}
stages:
  - {{name: a, kind: command, run: "true"}}
  - {{name: b, kind: command, run: "exit 1"}}
  - {{name: c, kind: command, run: "true"}}
""")
    run_cli("submit", str(path))
    run_dir = latest_run()
    wait_terminal(run_dir, timeout=120)
    readers = [subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "status", str(run_dir), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(20)]
    assert run_cli("rerun", run_dir.name) == 0
    outputs = [r.communicate(timeout=120) for r in readers]
    assert all(r.returncode == 0 for r in readers), [o[1][-300:] for o in outputs]
    for out, _ in outputs:
        json.loads(out)
    wait_terminal(run_dir, timeout=120)
    saved = state.Store(run_dir).read()
    assert len(saved.stages["b"].attempts) == 2 and len(saved.stages["c"].attempts) == 2
    record_figure("concurrency", {"status_processes": 20, "corrupt": 0, "lost_attempts": 0})


def test_submit_failing_after_the_run_dir_exists_says_what_to_do(slurm_cluster, write_spec, capsys):
    """Issue 13 item 7: sbatch refuses the second stage (a partition Slurm does not have). The run directory
    already exists and stage a is queued, so the error must name the run, what was queued, what was not, and
    both ways out; the run id goes to stdout as after a clean submit."""
    path = write_spec(f"""name: partial
cluster: {CLUSTER}
stages:
  - {{name: a, kind: command, run: "true"}}
  - {{name: b, kind: command, run: "true", resources: {{partition: nosuchpartition}}}}
  - {{name: c, kind: command, run: "true"}}
""")
    assert run_cli("submit", str(path)) == 1
    out, err = capsys.readouterr()
    run_dir = latest_run()
    run_id = run_dir.name
    saved = state.Store(run_dir).read()
    job_a = saved.stages["a"].current.job_id
    assert out.strip() == run_id
    assert "sbatch refused stage b" in err and "Invalid partition" in err
    assert f"run {run_id} ({run_dir}) is partly submitted: queued a (job {job_a}); not submitted: b, c" in err
    assert f"pipeline submit --resume {run_id}" in err and f"pipeline cancel {run_id}" in err
    assert "Traceback" not in err
    assert wait_terminal(run_dir, timeout=60)["a"] is S.COMPLETED  # what was accepted was released, and ran
    record_figure("partial_submit", {"queued": 1, "not_submitted": 2, "run_id_printed": True})
