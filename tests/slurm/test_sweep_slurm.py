"""Sweeps on the real Slurm 22.05 test cluster: one job array per per-variant stage, chained per variant with
aftercorr (sbatch(1) 22.05: "A task of this job array can begin execution after the corresponding task ID in the
specified job has completed successfully"), the shared stage once, rerun of one failed variant, and the split above
MaxArraySize. Command stages with sleeps keep it fast; the variants' finetunes take different times, so a plain
afterok on the whole array (every merge waiting for the slowest finetune) would show in sacct's start times."""

from __future__ import annotations

import subprocess
from datetime import datetime

import pytest

from orchestrator import state
from orchestrator.scheduler.slurm import SlurmScheduler
from orchestrator.states import JobState
from tests.helpers import latest_run, run_cli, wait_accounted, wait_terminal

pytestmark = pytest.mark.slurm
S = JobState
CLUSTER = '{name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:10:00"}}'


def sweep_spec(flag: str = "/nonexistent", sleeps: str = "[6, 1, 4, 1]") -> str:
    # finetune of variant v<i> sleeps sleeps[i] s; `fail: 1` makes v1 fail once (until the flag file exists)
    return f"""name: sweep
cluster: {CLUSTER}
stages:
  - {{name: download, kind: command, run: "sleep 2; echo weights > model.txt", outputs: [model.txt]}}
  - name: finetune
    kind: command
    params: {{sleep: 1, fail: 0}}
    run: |
      cat model.txt
      echo "variant $PIPELINE_VARIANT_INDEX: task ${{SLURM_ARRAY_TASK_ID:-none}} of ${{SLURM_ARRAY_JOB_ID:-none}}"
      if [ "$PARAM_FAIL" = 1 ] && [ ! -f {flag} ]; then touch {flag}; echo 'loss exploded' >&2; exit 3; fi
      sleep "$PARAM_SLEEP"; echo "adapter $PARAM_SLEEP" > adapter.txt
    outputs: [adapter.txt]
  - {{name: merge, kind: command, run: "cat adapter.txt > merged.txt", outputs: [merged.txt]}}
sweep:
  variants:
""" + "".join(f"    - {{name: v{i}, stages.finetune.params.sleep: {s}{', stages.finetune.params.fail: 1' if i == 1 else ''}}}\n"
              for i, s in enumerate(sleeps.strip("[]").split(", ")))


def sacct_rows(ids: list[str]) -> dict[str, dict[str, str]]:
    wait_accounted(ids)  # status may have seen the ends from the controller, before slurmdbd recorded them
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State,Start,End", "-j", ",".join(ids)],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        job_id, name, st, start, end = line.split("|")
        rows[job_id] = {"name": name, "state": st, "start": start, "end": end}
    return rows


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def jobs(run_dir) -> dict[str, str]:
    return {n: s.current.job_id for n, s in state.Store(run_dir).read().stages.items()}


def check_chained_per_variant(ids: dict[str, str], variants: int) -> dict[str, dict[str, str]]:
    rows = sacct_rows(list(ids.values()))
    ends = [when(rows[ids[f"finetune@v{i}"]]["end"]) for i in range(variants)]
    for i in range(variants):
        merge = rows[ids[f"merge@v{i}"]]
        assert when(merge["start"]) >= ends[i], f"merge@v{i} started before its finetune ended"
        assert when(rows[ids[f"finetune@v{i}"]]["start"]) >= when(rows[ids["download"]]["end"])
    # a fast variant's merge ran before the slowest finetune was done: not one afterok on the whole array
    assert when(rows[ids["merge@v1"]]["start"]) < max(ends)
    return rows


def test_four_variants_share_download_and_run_as_arrays_chained_by_aftercorr(slurm_cluster, write_spec):
    text = sweep_spec(sleeps="[8, 1, 4, 1]").replace(", stages.finetune.params.fail: 1", "")
    path = write_spec(text.replace("sweep:\n", "sweep:\n  throttle: 2\n"))
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    ids = jobs(run_dir)
    assert len(ids) == 9 and "download" in ids  # one download for all four variants
    finetune = [ids[f"finetune@v{i}"] for i in range(4)]
    array = finetune[0].split("_")[0]
    assert finetune == [f"{array}_{i}" for i in range(4)]
    # the controller holds the pending finetunes as ONE array record while download runs
    queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", array], capture_output=True, text=True,
                            check=True).stdout.split()
    assert queued == [f"{array}_[0-3%2]"] or all(q.startswith(f"{array}_") for q in queued)
    shown = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True, check=True).stdout
    assert "ArrayTaskThrottle=2" in shown  # sweep.throttle -> --array=0-3%2
    assert wait_terminal(run_dir, timeout=240) == {n: S.COMPLETED for n in ids}
    rows = check_chained_per_variant(ids, 4)
    in_array = sorted(j for j in rows if j.startswith(f"{array}_"))
    assert in_array == finetune and {rows[j]["name"] for j in in_array} == {f"{run_dir.name}.finetune"}
    merges = {ids[f"merge@v{i}"].split("_")[0] for i in range(4)}
    assert len(merges) == 1 and merges != {array}
    work = run_dir / "work" / "variants"
    assert [(work / f"v{i}" / "merged.txt").read_text().split() for i in range(4)] == [
        ["adapter", s] for s in ("8", "1", "4", "1")]
    assert (work / "v2" / "model.txt").is_symlink() and (work / "v2" / "model.txt").read_text() == "weights\n"
    log = next((run_dir / "logs").glob("finetune@v2.*.log")).read_text()
    assert f"variant 2: task 2 of {array}" in log and "weights" in log


def test_rerun_of_one_failed_variant(slurm_cluster, write_spec, tmp_path, capsys):
    path = write_spec(sweep_spec(flag=str(tmp_path / "v1-failed-once"), sleeps="[1, 1, 1, 1]"))
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    states = wait_terminal(run_dir, timeout=240)
    assert states["finetune@v1"] is S.FAILED and states["merge@v1"] is S.CANCELLED
    assert [n for n, s in states.items() if s is not S.COMPLETED] == ["finetune@v1", "merge@v1"]
    capsys.readouterr()
    run_cli("status", run_dir.name)
    table = capsys.readouterr().out
    assert "sweep: 4 variants x 2 per-variant stages" in table and "FAILED" in table.split("sweep:")[1]
    assert run_cli("rerun", run_dir.name, "--variant", "v1") == 0
    assert wait_terminal(run_dir, timeout=240) == {n: S.COMPLETED for n in states}
    saved = state.Store(run_dir).read()
    assert [len(saved.stages[n].attempts) for n in ("download", "finetune@v0", "finetune@v1", "merge@v1")] == [1, 1, 2, 2]
    second = saved.stages["merge@v1"].current.job_id
    first = saved.stages["finetune@v1"].current.job_id
    rows = sacct_rows([first, second])
    assert when(rows[second]["start"]) >= when(rows[first]["end"])


def test_split_above_max_array_size_keeps_aftercorr_pairs(slurm_cluster, write_spec, monkeypatch):
    """MaxArraySize of the test cluster is Slurm's default 1001 (read for real here); lowering it in slurm.conf
    would need `scontrol reconfigure` under every other test, so the split is driven by the scheduler's answer:
    max_array_size() returns 3 (a stand-in for a cluster with MaxArraySize=3). Everything else is real: two
    finetune submissions (3 tasks + 1 job) and two merge submissions cut at the same boundaries."""
    assert SlurmScheduler(None, _profile()).max_array_size() == 1001
    monkeypatch.setattr(SlurmScheduler, "max_array_size", lambda self: 3)
    path = write_spec(sweep_spec(sleeps="[6, 1, 4, 1]").replace(", stages.finetune.params.fail: 1", ""))
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    ids = jobs(run_dir)
    first = ids["finetune@v0"].split("_")[0]
    assert [ids[f"finetune@v{i}"] for i in range(3)] == [f"{first}_{i}" for i in range(3)]
    assert "_" not in ids["finetune@v3"] and "_" not in ids["merge@v3"]
    assert wait_terminal(run_dir, timeout=240) == {n: S.COMPLETED for n in ids}
    check_chained_per_variant(ids, 4)


def _profile():
    from orchestrator.spec import ClusterProfile

    return ClusterProfile(name="dev", scheduler="slurm")
