"""The thin CLI (orchestrator/cli.py + one module a verb under orchestrator/commands/): what a verb prints and
returns when the layer below fails part-way.

The FakeScheduler stands in for sbatch refusing the second stage; the same path against real Slurm is
tests/slurm/test_reliability_slurm.py::test_submit_failing_after_the_run_dir_exists_says_what_to_do.
"""

from __future__ import annotations

from orchestrator import apply, cli, state
from orchestrator.scheduler.fake import FakeScheduler
from orchestrator.states import JobState

CHAIN = """
    name: partial
    stages:
      - {name: a, kind: command, run: "true"}
      - {name: b, kind: command, run: "true"}
      - {name: c, kind: command, run: "true"}
"""


def test_partly_submitted_run_prints_its_id_and_the_ways_out(write_spec, monkeypatch, capsys, tmp_path):
    fake = FakeScheduler(fail_submit_of="b")
    monkeypatch.setattr(apply, "for_cluster", lambda cluster, run_dir: fake)
    assert cli.main(["submit", str(write_spec(CHAIN)), "--run-root", str(tmp_path / "runs")]) == 1
    out, err = capsys.readouterr()
    run_dir = state.find_run(None)
    saved = state.Store(run_dir).read()
    job_a = saved.stages["a"].current.job_id
    assert out.strip() == run_dir.name  # the run exists: its id goes to stdout as after a clean submit
    assert f"run {run_dir.name} ({run_dir}) is partly submitted: queued a (job {job_a}); not submitted: b, c" in err
    assert f"pipeline submit --resume {run_dir.name}" in err and f"pipeline cancel {run_dir.name}" in err
    assert fake.released == [job_a] and saved.stages["b"].state is JobState.NOT_SUBMITTED


def test_every_verb_has_its_module_and_help(capsys):
    """Each verb's flags are declared by its own module: `pipeline <verb> --help` works for all of them."""
    verbs = {"validate", "schema", "render", "submit", "status", "list", "rerun", "cancel", "logs", "clusters",
             "report", "dev-cluster"}
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.dest == "verb").choices
    assert set(choices) == verbs
    for verb in verbs:
        try:
            cli.main([verb, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert f"usage: pipeline {verb}" in capsys.readouterr().out
