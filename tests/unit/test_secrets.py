"""What the backends hand on to jobs: never a secret-looking variable, never one a run's secrets reference."""

from __future__ import annotations

import json

import pytest

from orchestrator import secrets
from orchestrator.errors import PipelineError
from orchestrator.spec import SecretRef


def test_job_env_drops_secret_names_and_every_referenced_variable(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"secrets": {
        "HF_TOKEN": {"env": "PLAINSRC"}, "DB_LOGIN": {"file": "/x"}}}))
    env = {"PATH": "/bin", "PLAINSRC": "hf_x", "DB_LOGIN": "u:p", "WANDB_API_KEY": "k", "MY_TOKEN": "t",
           "HOME": "/root"}
    assert secrets.job_env(tmp_path, env) == {"PATH": "/bin", "HOME": "/root"}


def test_job_env_without_a_plan_still_scrubs_secret_looking_names(tmp_path):
    assert secrets.job_env(tmp_path, {"AWS_SESSION_TOKEN": "s", "LANG": "C"}) == {"LANG": "C"}


def test_env_secret_missing_in_the_job_says_what_to_do():
    with pytest.raises(PipelineError) as err:
        secrets.resolve("HF_TOKEN", SecretRef(env="PLAINSRC"), {})
    assert "PLAINSRC is not set in the job" in str(err.value) and "file:" in str(err.value)


def test_file_secret_must_be_private(tmp_path):
    path = tmp_path / "t"
    path.write_text("v\n")
    path.chmod(0o644)
    with pytest.raises(PipelineError, match="readable by others"):
        secrets.resolve("HF_TOKEN", SecretRef(file=str(path)), {})
    path.chmod(0o600)
    assert secrets.resolve("HF_TOKEN", SecretRef(file=str(path)), {}) == "v"


def test_submitter_is_told_when_an_env_secret_will_not_be_handed_over():
    refs = {"HF_TOKEN": SecretRef(env="PLAINSRC"), "KEY": SecretRef(env="UNSET_HERE"), "F": SecretRef(file="/x")}
    notes = secrets.not_handed_over(refs, {"PLAINSRC": "hf_x"})
    assert len(notes) == 1 and "$PLAINSRC" in notes[0] and "file:" in notes[0] and "hf_x" not in notes[0]
