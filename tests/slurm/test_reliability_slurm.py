"""Reliability drills on the real test cluster: kill -9 of submit, node loss, controller restart, secrets,
bad specs reaching no queue, and outputs checked after a zero exit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import devcluster, state
from orchestrator.merge import DISPUTED
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
    # Python start-up before submit's first write varies with load (0.4-1.5 s on 2 shared cores): measure it, then
    # spread the kills from just before it to past the last release.
    started = time.monotonic()
    assert _cli("submit", str(path), env={state.FAULT_ENV: "staging-created:kill"}).returncode == -signal.SIGKILL
    first_write = time.monotonic() - started
    for delay in [first_write - 0.1 + 0.03 * i for i in range(25)]:
        child = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "submit", str(path)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
    listed = _cli("list", "--last", "100").stdout
    staged = 0
    for run_dir in sorted((pipeline_home / "runs").iterdir()):
        if run_dir.name.startswith("."):
            # Killed while the run was being assembled: nothing was submitted; the next submit sweeps it away.
            assert tagged(run_dir.name[1:].split(".")[0], names) == {}
            staged += 1
            continue
        assert run_dir.name in listed, f"{run_dir.name} exists but `pipeline list` does not show it"
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
    assert _cli("submit", str(path)).returncode == 0
    assert not [p for p in (pipeline_home / "runs").iterdir() if p.name.startswith(".")]
    record_figure("submit_kill9", {"kills": kills, "runs_resumed": resumed, "corrupt": corrupt,
                                   "duplicates": duplicates, "staging_folders_left_for_the_final_sweep": staged})
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
    killed = time.monotonic()
    seen: list[tuple[float, str]] = []  # (seconds after the kill, train's status line) each time it changed
    try:
        deadline = killed + 300
        while True:
            lines = _status_lines(run_dir)
            if not seen or seen[-1][1] != lines["train"][:40] + lines["train"][76:]:
                seen.append((time.monotonic() - killed, lines["train"][:40] + lines["train"][76:]))
            if "COMPLETED" in lines["train"] and "COMPLETED" in lines["after"]:
                break
            assert time.monotonic() < deadline, seen
            time.sleep(0.5)
    finally:
        devcluster.start_node(slurm_cluster, node)
    # Issue 13 item 5: while requeued it says so (not "waiting"); running again it carries no stale BeginTime and
    # counts the restart; at the end the restart, its cause and time are still shown.
    pending = [line for _, line in seen if " PENDING " in line]
    running_again = [line for _, line in seen if " RUNNING " in line and "restart 1" in line]
    # In CI under load the controller requeues a second before slurmdbd records the NODE_FAIL: the cause may be
    # missing from the first pending lines (accounting has not said it yet), never "requeued" and the count, and
    # that lag is no "sources disagree" (slurm_parse.combine compares squeue's RestartCnt).
    assert pending and all("requeued" in line and "restart 1" in line for line in pending), seen
    assert any("restart 1 (NODE_FAIL" in line for line in pending) and not any(DISPUTED in l for _, l in seen), seen
    assert running_again and not any("BeginTime" in line for _, line in seen), seen
    assert "restart 1 (NODE_FAIL at" in seen[-1][1] and f"on {node}" in seen[-1][1], seen
    records = sorted((run_dir / "records" / "train").glob("*.json"))
    assert len(records) == 2  # restart 0 (lost with the node) and restart 1 (requeued)
    log = next((run_dir / "logs").glob("train.*.log")).read_text()
    resumed_at = int(log.split("start at step ")[-1].split()[0])
    assert resumed_at >= 6  # continued from its checkpoint, did not restart at 0
    first = {kind: next((round(t) for t, line in seen if kind in line and "restart 1" in line), None)
             for kind in (" PENDING ", " RUNNING ", " COMPLETED ")}
    record_figure("node_loss", {"lost_node": node, "resumed_at_step": resumed_at, "restarts": len(records) - 1,
                                "s_after_kill_requeued_shown": first[" PENDING "],
                                "s_after_kill_running_again": first[" RUNNING "],
                                "s_after_kill_completed": first[" COMPLETED "], "final_note": seen[-1][1][40:].strip()})


def test_controller_restart_mid_run(slurm_cluster, write_spec):
    # s1, the stage running when slurmctld restarts, sleeps 10 s: wait_state must see it RUNNING, and one status
    # refresh takes a second or more on a loaded CI machine, so a 2 s stage could go by between two polls.
    path = write_spec(f"name: ctld\ncluster: {CLUSTER}\nstages:\n"
                      + "".join(f'  - {{name: s{i}, kind: command, run: "sleep {10 if i == 1 else 2}"}}\n'
                                for i in range(4)))
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
    # Every job the controller knows, ended ones included (MinJobAge=300): a job wrongly submitted here shows up even
    # if it has already ended, and even before slurmdbd has it (sacct alone could miss it during its lag).
    known = ["squeue", "-h", "--states=all", "-o", "%i"]
    before = subprocess.run(known, capture_output=True, text=True).stdout.split()
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    corpus = sorted((REPO / "tests" / "badspecs").glob("*.yaml"))
    on_dev = [write_spec(f"name: bad\ncluster: {CLUSTER}\nstages:\n  - {{name: a, kind: command, run: echo}}\n"
                         f"  - {{name: b, kind: command, run: echo, {extra}}}\n", f"dev{i}.yaml")
              for i, extra in enumerate(["after: [zz]", "resources: {nodes: 0}", "resources: {time: soon}",
                                         "retries: -1", "resources: {sbatch: {hold: true}}"])]
    for path in [*corpus, *on_dev]:
        assert run_cli("submit", str(path)) == 1, path
    after = subprocess.run(known, capture_output=True, text=True).stdout.split()
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


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, cwd=REPO)


def _visible_runs(pipeline_home: Path) -> list[Path]:
    return sorted(p for p in (pipeline_home / "runs").iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("lose_pickle", [False, True], ids=["pickle-left", "pickle-lost"])
def test_resume_never_releases_a_job_without_its_pickle(slurm_cluster, write_spec, pipeline_home, lose_pickle):
    """Issue 13 item 1: submit is SIGKILLed right after sbatch accepted s1 and before submitit moved s1's pickle
    into submitit/<id>/ (the test-only fault point in SlurmScheduler's executor). Resume must repair the job
    (the pickle is still there under submitit's temporary name) or, when the pickle is gone too, cancel it and
    submit s1 (and s2, whose afterok pointed at it) again, and say which. The old code released the job, which
    then failed after submitit's 60 s wait."""
    path = write_spec(f"name: pickle\ncluster: {CLUSTER}\nstages:\n"
                      + "".join(f'  - {{name: s{i}, kind: command, run: "echo ran s{i}"}}\n' for i in range(3)))
    killed = _cli("submit", str(path), env={state.FAULT_ENV: "sbatch-accepted:s1:kill"})
    assert killed.returncode == -signal.SIGKILL
    [run_dir] = _visible_runs(pipeline_home)
    orphan = tagged(run_dir.name, ["s1"])["s1"]
    leftovers = list((run_dir / "submitit").glob("*.pkl"))
    assert len(orphan) == 1 and len(leftovers) == 1 and state.Store(run_dir).read().stages["s1"].current is None
    if lose_pickle:
        leftovers[0].unlink()
    start = time.monotonic()
    resumed = _cli("submit", "--resume", run_dir.name)
    assert resumed.returncode == 0, resumed.stderr
    if lose_pickle:
        assert (f"stage s1: job {orphan[0]} cannot run (its submitit pickle ({orphan[0]}_submitted.pkl) is missing "
                "and no copy was left): cancelled, submitted again") in resumed.stderr
    else:
        assert f"stage s1: job {orphan[0]} repaired: moved its submitit pickle from {leftovers[0].name}" in resumed.stderr
    assert wait_terminal(run_dir, timeout=90) == {f"s{i}": S.COMPLETED for i in range(3)}
    seconds = time.monotonic() - start
    saved = state.Store(run_dir).read()
    jobs = tagged(run_dir.name, ["s0", "s1", "s2"])
    if lose_pickle:
        assert [a.state for a in saved.stages["s1"].attempts] == [S.CANCELLED, S.COMPLETED]
        assert len(jobs["s1"]) == 2 and len(jobs["s2"]) == 1  # s2 was never submitted before the kill
    else:
        assert saved.stages["s1"].current.job_id == orphan[0] and all(len(ids) == 1 for ids in jobs.values())
    assert "ran s1" in (run_dir / "logs" / f"s1.{saved.stages['s1'].current.job_id}.log").read_text()
    record_figure(f"kill_between_sbatch_and_pickle_{'lost' if lose_pickle else 'left'}",
                  {"resume_to_completed_s": round(seconds, 1), "completed": 3,
                   "action": "cancelled and resubmitted" if lose_pickle else "pickle moved into place"})


KILL_POINTS = ["staging-created", "staged", "indexed", "visible", "sbatch-accepted:s0", "recorded:s0",
               "sbatch-accepted:s2", "before-release"]


def test_every_kill_point_of_submit_leaves_a_listed_resumable_run_or_nothing(slurm_cluster, write_spec,
                                                                             pipeline_home):
    """Issue 13 item 2: submit SIGKILLed at each instant where it changes something (test-only fault points).
    Afterwards every run directory is either listed by `pipeline list` and completed by `submit --resume` with
    one job per stage, or a hidden staging folder (nothing submitted from it) that the next submit removes.
    The old code left folders holding only `.state.json.<pid>.tmp`, and runs with a state file but no index."""
    path = write_spec(f"name: points\ncluster: {CLUSTER}\nstages:\n"
                      + "".join(f'  - {{name: s{i}, kind: command, run: "true"}}\n' for i in range(3)))
    outcomes = {}
    for point in KILL_POINTS:
        before = set((pipeline_home / "runs").iterdir()) if (pipeline_home / "runs").exists() else set()
        assert _cli("submit", str(path), env={state.FAULT_ENV: f"{point}:kill"}).returncode == -signal.SIGKILL
        new = set((pipeline_home / "runs").iterdir()) - before
        visible = [p for p in new if not p.name.startswith(".")]
        listed = _cli("list", "--last", "100").stdout
        if not visible:
            [staging] = new
            run_id = staging.name[1:].split(".")[0]
            assert tagged(run_id, ["s0", "s1", "s2"]) == {} and run_id not in listed
            outcomes[point] = "staging folder, nothing submitted"
            continue
        [run_dir] = visible
        assert run_dir.name in listed, f"{point}: {run_dir.name} not listed"
        assert _cli("submit", "--resume", run_dir.name).returncode == 0
        assert wait_terminal(run_dir, timeout=60) == {f"s{i}": S.COMPLETED for i in range(3)}
        jobs = tagged(run_dir.name, ["s0", "s1", "s2"])
        assert all(len(ids) == 1 for ids in jobs.values()) and len(jobs) == 3, (point, jobs)
        outcomes[point] = "listed, resumed, 1 job per stage"
    assert _cli("submit", str(path)).returncode == 0  # sweeps what the killed ones left half-built
    leftovers = [p.name for p in (pipeline_home / "runs").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert all(run_dir.name in _cli("list", "--last", "100").stdout for run_dir in _visible_runs(pipeline_home))
    record_figure("submit_kill_points", outcomes)


def test_concurrent_reruns_submit_a_stage_once(slurm_cluster, write_spec):
    """Issue 13 item 3: four `pipeline rerun RUN --stage b` started together: the run lock lets one submit b and
    the others, waiting for the lock, then see b queued/running and refuse. `cancel --stage b` then cancels
    every live job of b, including a duplicate the state file never recorded (what the old race left)."""
    # The rerun b sleeps until `cancel --stage b` below: the three refused reruns must find it queued or running
    # however long the four processes take on a loaded machine (they queue for the run lock one by one).
    body = 'if [ -e "$WORKDIR/failed-once" ]; then sleep 300; else mkdir -p "$WORKDIR"; touch "$WORKDIR/failed-once"; exit 1; fi'
    path = write_spec(f"""name: rerun4
cluster: {CLUSTER}
stages:
  - {{name: a, kind: command, run: "true"}}
  - {{name: b, kind: command, run: '{body}'}}
  - {{name: c, kind: command, run: "true"}}
""")
    run_cli("submit", str(path))
    run_dir = latest_run()
    assert wait_terminal(run_dir, timeout=60) == {"a": S.COMPLETED, "b": S.FAILED, "c": S.CANCELLED}
    argv = [sys.executable, "-m", "orchestrator.cli", "rerun", run_dir.name, "--stage", "b"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(4)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    ok = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] == 1 and "still queued or running" in r[2]]
    jobs = tagged(run_dir.name, ["b"])["b"]
    assert len(ok) == 1 and len(refused) == 3, results
    assert len(jobs) == 2  # the failed one and exactly one rerun
    from orchestrator.commands import load_run
    from orchestrator.scheduler import SubmitRequest

    store, saved, scheduler = load_run(run_dir.name)
    duplicate = scheduler.submit(SubmitRequest(run_dir=run_dir, run_id=run_dir.name, stage="b",
                                               resources=saved.stage("b").resources))
    cancelled = _cli("cancel", run_dir.name, "--stage", "b")
    live_b = [j for j in jobs[1:] + [duplicate]]
    assert cancelled.returncode == 0 and all(j in cancelled.stdout for j in live_b), cancelled.stdout
    deadline = time.monotonic() + 30
    while subprocess.run(["squeue", "-h", "-j", ",".join(live_b), "-o", "%i"], capture_output=True,
                         text=True).stdout.strip():
        assert time.monotonic() < deadline, "cancelled jobs still queued"
        time.sleep(0.5)
    record_figure("concurrent_reruns", {"started": 4, "submitted": len(ok), "refused": len(refused),
                                        "jobs_of_stage": len(jobs), "cancel_stage_cancelled": len(live_b)})


def _status_lines(run_dir: Path) -> dict[str, str]:
    """`pipeline status` as printed: stage -> its table line; 'warning' -> the warning lines."""
    out = _cli("status", str(run_dir)).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.startswith("  ") and line.split()}
    lines["warning"] = "\n".join(l for l in out.splitlines() if l.startswith("warning:"))
    return lines


def _exit_column(line: str) -> str:
    """The EXIT column of a status line (fixed-width table: STAGE STATE JOB NODES ELAPSED EXIT NOTE)."""
    return line[2 + 17 + 15 + 11 + 15 + 10:2 + 17 + 15 + 11 + 15 + 10 + 4].strip()


def test_exit_codes_signals_and_who_cancelled(slurm_cluster, write_spec):
    """Issue 13 item 6: a stage that hits its 1-minute time limit shows the signal that ended it (the old code
    showed EXIT 0); pending and cancelled stages show no exit code (old: 0); a stage cancelled by the user is
    told apart from one cancelled because its dependency failed (old: both 'a dependency failed')."""
    path = write_spec(f"""name: exits
cluster: {CLUSTER}
stages:
  - {{name: slow, kind: command, run: "sleep 300", resources: {{time: "1"}}}}
  - {{name: after_slow, kind: command, run: "true"}}
  - {{name: victim, kind: command, run: "true", after: [slow]}}
  - {{name: solo, kind: command, run: "sleep 300", after: []}}
""")
    run_cli("submit", str(path))
    run_dir = latest_run()
    deadline = time.monotonic() + 60  # accounting learns of a start a moment after the controller: poll the CLI
    while not all("RUNNING" in (during := _status_lines(run_dir))[n] for n in ("slow", "solo")):
        assert time.monotonic() < deadline, during
        time.sleep(0.3)
    assert "PENDING" in during["after_slow"] and _exit_column(during["after_slow"]) == ""
    assert "RUNNING" in during["slow"] and _exit_column(during["slow"]) == ""
    saved = state.Store(run_dir).read()
    subprocess.run(["scancel", saved.stages["victim"].current.job_id], check=True)  # a user, not pipeline
    assert _cli("cancel", run_dir.name, "--stage", "solo").returncode == 0
    wait_state(run_dir, "victim", S.CANCELLED, timeout=30)
    started = time.monotonic()
    # slurmctld enforces the 1-minute limit on a periodic background pass, not to the second, then KillWait (5 s),
    # then slurmdbd catches up: 69 s waited here on a quiet machine (reliability-figures.json); 300 s for a loaded one.
    assert wait_terminal(run_dir, timeout=300) == {"slow": S.TIMEOUT, "after_slow": S.CANCELLED,
                                                   "victim": S.CANCELLED, "solo": S.CANCELLED}
    lines = _status_lines(run_dir)
    assert _exit_column(lines["slow"]) == "143" and "hit its time limit" in lines["slow"]
    assert "ended by SIGTERM" in lines["slow"]
    assert _exit_column(lines["after_slow"]) == "" and "a dependency failed" in lines["after_slow"]
    assert _exit_column(lines["victim"]) == "" and "cancelled by a user (scancel)" in lines["victim"]
    assert "cancelled by `pipeline cancel`" in lines["solo"]
    record_figure("exit_codes", {"timeout_exit": _exit_column(lines["slow"]), "timeout_note": lines["slow"][76:].strip(),
                                 "pending_exit": "", "seconds_waiting_for_the_time_limit": round(time.monotonic() - started)})


def test_accounting_down_falls_back_to_controller_and_records(slurm_cluster, write_spec):
    """Issue 13 item 9: slurmdbd up, its database (MariaDB) stopped, so every sacct fails with "Unable to connect
    to database". Status must show the states the controller and the job records know, with one warning line;
    rerun must work (old: "still queued or running"); cancel must not target finished jobs."""
    path = write_spec(f"""name: noacct
cluster: {CLUSTER}
stages:
  - {{name: a, kind: command, run: "true"}}
  - {{name: b, kind: command, run: "exit 3"}}
  - {{name: c, kind: command, run: "true"}}
  - {{name: d, kind: command, run: "sleep 300", after: []}}
""")
    devcluster.stop_database(slurm_cluster)
    try:
        run_cli("submit", str(path))
        run_dir = latest_run()
        deadline = time.monotonic() + 120  # d (cancelled below) sleeps longer, so it is still running by then
        while True:
            lines = _status_lines(run_dir)
            if "CANCELLED" in lines["c"] and "RUNNING" in lines["d"]:
                break
            assert time.monotonic() < deadline, lines
            time.sleep(0.5)
        assert lines["warning"].count("\n") == 0 and "accounting is unreachable" in lines["warning"]
        assert "COMPLETED" in lines["a"] and _exit_column(lines["a"]) == "0"
        assert "FAILED" in lines["b"] and _exit_column(lines["b"]) == "3" and "script exited 3" in lines["b"]
        assert "a dependency failed" in lines["c"] and _exit_column(lines["c"]) == ""
        assert not any("UNKNOWN" in v or "query failed" in v for v in lines.values())
        rerun = _cli("rerun", run_dir.name)
        assert rerun.returncode == 0 and "b: " in rerun.stdout and "c: " in rerun.stdout, rerun.stderr
        a_job = state.Store(run_dir).read().stages["a"].current.job_id
        cancelled = _cli("cancel", run_dir.name)
        assert cancelled.returncode == 0 and a_job not in cancelled.stdout.split()
        d_job = state.Store(run_dir).read().stages["d"].current.job_id
        assert d_job in cancelled.stdout
    finally:
        devcluster.start_database(slurm_cluster)
    assert _status_lines(run_dir)["warning"] == ""
    record_figure("accounting_down", {"warning_lines": 1, "unknown_stages": 0, "rerun": "accepted",
                                      "cancel_targets_finished": 0})
