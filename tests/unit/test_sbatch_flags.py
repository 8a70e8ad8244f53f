"""Resources become sbatch flags in one place (issue 12 item 2): Resources.sbatch_options. `pipeline render`
shows them (plan.resource_flags) and the Slurm backend submits them through submitit; both must say the same.
The submitted side is read from the `#SBATCH` lines submitit 1.5.4 itself writes (slurm.py
_make_sbatch_string via SlurmExecutor._make_submission_file_text), no sbatch needed."""

from __future__ import annotations

from pathlib import Path

import submitit

from orchestrator.plan import resource_flags
from orchestrator.scheduler import SubmitRequest
from orchestrator.scheduler.slurm import SlurmScheduler
from orchestrator.spec import ClusterProfile, Resources

RES = Resources(nodes=2, ntasks_per_node=8, cpus_per_task=12, gpus_per_node=0, gres="gpu:8", mem="200G",
                time="02:00:00", partition="p5", exclusive=True, constraint="h100", account="ml", qos="high",
                sbatch={"mail-type": "END", "overcommit": True, "requeue-never": False})


def submitted_lines(tmp_path: Path, res: Resources) -> set[str]:
    request = SubmitRequest(tmp_path, "run-1", "train", res)
    executor = submitit.SlurmExecutor(folder=tmp_path / "%j")
    executor.update_parameters(**SlurmScheduler(tmp_path, ClusterProfile(name="c"))._parameters(request))
    text = executor._make_submission_file_text("true", "uid")
    return {line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")}


def test_render_shows_exactly_the_resource_flags_that_are_submitted(tmp_path: Path) -> None:
    shown = resource_flags(RES)
    assert shown == ["--nodes=2", "--ntasks-per-node=8", "--cpus-per-task=12", "--gres=gpu:8", "--mem=200G",
                     "--time=02:00:00", "--partition=p5", "--constraint=h100", "--account=ml", "--qos=high",
                     "--exclusive", "--mail-type=END", "--overcommit"]
    lines = submitted_lines(tmp_path, RES)
    assert set(shown) <= lines
    assert not any(line.startswith(("--gpus-per-node", "--requeue-never")) for line in lines)  # 0 and false: none


def test_unset_nodes_submit_one_node(tmp_path: Path) -> None:
    assert resource_flags(Resources()) == []
    assert "--nodes=1" in submitted_lines(tmp_path, Resources())
