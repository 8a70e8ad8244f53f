"""`container:` (image, mounts, workdir; per pipeline, overridable per stage): rendered as pyxis's srun flags on
every task of a stage, as seed 002's sbatch files run each step (`srun --container-image $ENROOT_IMAGE
--container-mounts $CONTAINER_MOUNT ...`, awsome-distributed-training 3.test_cases/torchtune/slurm/tutorials/
e2e-llama3-70b-development), and checked at validate time against every path the stage reads or writes.

Golden files only: pyxis and enroot cannot be installed here, so no container has ever run from these scripts.
The flags are pyxis's documented ones (NVIDIA/pyxis README: --container-image, --container-mounts
SRC:DST[:FLAGS],..., --container-workdir).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import orchestrator
from orchestrator import loader, plan
from orchestrator.errors import SpecError
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "llama3-70b-torchtune-p5.yaml"
GOLDEN = REPO / "tests" / "golden" / "llama3-70b-torchtune-p5" / "container"
UPDATE = os.environ.get("PIPELINE_UPDATE_GOLDEN") == "1"
IMAGE = "/fsx/ubuntu/images/pytorch-torchtune.sqsh"


@pytest.fixture(autouse=True)
def pipeline_on_fsx(monkeypatch):
    """pipeline installed on the cluster's shared storage, as on a head node (its stage programs must be mounted)."""
    monkeypatch.setattr(orchestrator, "STAGES_PATH", "/fsx/ubuntu/pipeline")


def container_example(tmp_path: Path, **change) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data.pop("venv")
    data["container"] = {"image": IMAGE, "mounts": ["/fsx:/fsx"], "workdir": data["workdir"]}
    for key, value in change.items():
        data[key] = value
    (tmp_path / "clusters").mkdir(exist_ok=True)
    (tmp_path / "clusters" / "hyperpod-p5.yaml").write_text((REPO / "clusters" / "hyperpod-p5.yaml").read_text())
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_container_scripts_match_golden_files(tmp_path):
    for stage in plan.build(loader.load(container_example(tmp_path))).stages:
        golden = GOLDEN / f"{stage.name}.sh"
        if UPDATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(stage.script)
        assert stage.script == golden.read_text(), f"{stage.name}.sh differs; PIPELINE_UPDATE_GOLDEN=1 if intended"


def test_every_task_runs_in_the_image(tmp_path):
    scripts = {s.name: s.script for s in plan.build(loader.load(container_example(tmp_path))).stages}
    flags = f"--container-image={IMAGE} --container-mounts=/fsx:/fsx --container-workdir=/fsx/ubuntu/torchtune-llama3-70b"
    # A one-task stage re-runs itself inside the image before anything else (env, venv, body).
    download = scripts["download"]
    assert f"exec srun --ntasks=1 --nodes=1 {flags} bash \"$0\" \"$@\"" in download
    assert download.index("exec srun") < download.index("tune download")
    # A multi-node finetune: the set-up as one task in the image, then one task per node in the image.
    lora = scripts["lora"]
    assert f"PIPELINE_IN_CONTAINER=1 srun --ntasks=1 --nodes=1 {flags} bash \"$0\" --prepare" in lora
    assert f"SRUN_FLAGS+=({flags})" in lora and lora.index("--prepare") < lora.index("SRUN_FLAGS+=(")
    assert "exec srun --ntasks=1" not in lora  # not the one-task re-run: the tasks need srun on the host
    assert "source " not in "".join(scripts.values())  # the image is the env: no venv activated
    assert "python -m pip install" not in scripts["create_env"] and "pip freeze" in scripts["create_env"]


def test_a_stage_overrides_the_pipelines_container(tmp_path):
    path = container_example(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["stages"][4]["container"] = {"image": "nvcr.io#nvidia/pytorch:24.07-py3"}  # evaluate
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    scripts = {s.name: s.script for s in plan.build(loader.load(path)).stages}
    # shell-quoted: `#` would start a comment
    assert "'--container-image=nvcr.io#nvidia/pytorch:24.07-py3' --container-mounts=/fsx:/fsx" in scripts["evaluate"]
    assert f"--container-image={IMAGE}" in scripts["quantize"]


@pytest.mark.parametrize("change,key,message", [
    ({"container": {"image": IMAGE, "mounts": ["/fsx/ubuntu/torchtune-llama3-70b"]}}, "container.mounts",
     "the container does not mount /fsx/ubuntu/pipeline-runs (the run directory (cluster run_root))"),
    ({"container": {"image": IMAGE, "mounts": ["/scratch:/fsx/ubuntu/pipeline-runs", "/fsx/ubuntu/torchtune-llama3-70b"]}},
     "container.mounts", "does not mount /fsx/ubuntu/pipeline (pipeline's stage programs"),
    ({"container": {"mounts": ["/fsx"]}}, "container", "a container needs an image"),
    ({"container": {"image": IMAGE, "mounts": ["fsx"]}}, "container.mounts[0]", "should match pattern"),
])
def test_mounts_must_cover_what_the_stage_reads_and_writes(tmp_path, change, key, message):
    with pytest.raises(SpecError) as err:
        loader.load(container_example(tmp_path, **change))
    text = str(err.value)
    assert message in text and f": {key}" in text and f"{tmp_path / 'pipeline.yaml'}:" in text, text


def test_a_model_path_in_params_must_be_mounted(tmp_path):
    path = container_example(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["stages"][4]["params"]["include_path"] = "/home/me/tasks"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match=r"stage 'evaluate': the container does not mount /home/me/tasks \(a path in "
                                        r"params\)"):
        loader.load(path)


def test_containers_need_slurm(write_spec):
    path = write_spec("name: c\ncluster: local\ncontainer: {image: x.sqsh, mounts: [/]}\n"
                      "stages:\n  - {name: a, kind: command, run: 'true'}\n")
    with pytest.raises(SpecError, match="needs Slurm with pyxis"):
        loader.load(path)


def test_the_hf_familys_torchrun_tasks_run_in_the_image_too(tmp_path):
    """The container flags come from the shared templates (_base.sh.j2, _launch.sh.j2), so every family gets them:
    the FSDP QLoRA example (seeds 003/004) with its venv inside the image."""
    data = yaml.safe_load((REPO / "examples" / "llama3-70b-fsdp-qlora-gpu.yaml").read_text())
    data["container"] = {"image": IMAGE, "mounts": ["/fsx"]}
    path = tmp_path / "qlora.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    scripts = {s.name: s.script for s in plan.build(loader.load(path)).stages}
    flags = f"--container-image={IMAGE} --container-mounts=/fsx"
    assert f"SRUN_FLAGS+=({flags})" in scripts["finetune"] and "exec srun --ntasks=1" not in scripts["finetune"]
    for name in ("download", "merge", "evaluate"):
        assert f"exec srun --ntasks=1 --nodes=1 {flags} bash \"$0\" \"$@\"" in scripts[name], name
