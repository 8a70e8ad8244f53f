"""Remote submit -> status -> logs over a REAL sshd onto the suite's REAL Slurm cluster (tests.slurm_fixture).

SLURM_CONF and PIPELINE_HOME reach the remote pipeline through the remote command's environment (Target.env),
as they would on a head node whose login environment does not know the test cluster.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.loader import referenced_files
from orchestrator.remote import forward
from tests.remote.conftest import SshServer

pytestmark = pytest.mark.slurm

SPEC = """
name: remote-slurm
cluster: {name: dev, scheduler: slurm, hyperpod: "off", defaults: {time: "00:10:00"}}
stages:
  - {name: prep, kind: command, run: "echo prep on $(hostname)"}
  - {name: train, kind: command, run: "echo training $PARAM_WHAT", params: {what: "over ssh"}}
"""


def test_remote_submit_status_logs_on_slurm(slurm_cluster: Any, sshd: SshServer,
                                            write_spec: Callable[..., Path],
                                            capfd: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(SPEC)
    target = sshd.target(env={"PIPELINE_HOME": os.environ["PIPELINE_HOME"], **slurm_cluster.env()})
    assert forward(target, ["submit", str(spec)], referenced_files(spec)) == 0
    run_id = capfd.readouterr().out.strip().splitlines()[-1]
    assert run_id.startswith("remote-slurm-")
    deadline = time.monotonic() + 240
    while True:
        assert forward(target, ["status", run_id, "--json"]) == 0
        data = json.loads(capfd.readouterr().out)
        states = {name: stage["state"] for name, stage in data["stages"].items()}
        if all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
               for s in states.values()):
            break
        assert time.monotonic() < deadline, states
        time.sleep(1.0)
    assert states == {"prep": "COMPLETED", "train": "COMPLETED"}
    assert data["scheduler"] == "slurm"
    job = data["stages"]["train"]["attempts"][-1]["job_id"]
    assert re.fullmatch(r"\d+", job.rsplit("/", 1)[-1]), job  # a real Slurm job id
    assert forward(target, ["status", run_id]) == 0
    assert re.search(r"train\s+COMPLETED", capfd.readouterr().out)
    assert forward(target, ["logs", run_id, "train"]) == 0
    assert "training over ssh" in capfd.readouterr().out
