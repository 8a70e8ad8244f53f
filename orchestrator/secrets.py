"""Run-time secret resolution. Called only inside the job wrapper: values live in that process's memory and
its child's environment, never in scripts, state, plan, logs or the scheduler's job record (defect 3)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from orchestrator.errors import PipelineError
from orchestrator.layout import RunPaths
from orchestrator.spec import SecretRef

# Variables never passed to sbatch/the local driver from the submitter's environment: Slurm stores a
# job's environment (sbatch --export=ALL is the default) where `scontrol show job` and admins can read it.
SECRET_ENV_NAMES = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "AWS_SECRET_ACCESS_KEY",
                              "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "WANDB_API_KEY"})


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return upper in SECRET_ENV_NAMES or upper.endswith(("_TOKEN", "_SECRET", "_PASSWORD", "_API_KEY"))


def scrubbed_env(env: Mapping[str, str], extra: frozenset[str] = frozenset()) -> dict[str, str]:
    """The environment minus anything that looks like a secret."""
    return {k: v for k, v in env.items() if not is_secret_name(k) and k not in extra}


def referenced_names(secrets: Mapping[str, SecretRef]) -> frozenset[str]:
    """Every variable a spec's secrets touch: the names they are exported as and the `env:` sources.

    `HF_TOKEN: {env: HFTOK}` must not carry the submitter's $HFTOK into sbatch's --export=ALL, where Slurm
    would keep it in the job record, even though HFTOK does not look like a secret's name."""
    return frozenset(secrets) | frozenset(ref.env for ref in secrets.values() if ref.env is not None)


def not_handed_over(secrets: Mapping[str, SecretRef], env: Mapping[str, str]) -> list[str]:
    """Notes for `env:` secrets whose variable the submitter has set: pipeline will not pass that value on."""
    return [f"secret {name} is read from ${ref.env} where the job runs; your shell's ${ref.env} is not passed to "
            "the job (the scheduler would store it). To hand over this value use `file:` (mode 0600) or "
            "`aws_secret:`." for name, ref in secrets.items() if ref.env is not None and env.get(ref.env)]


def job_env(run_dir: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The environment a backend may hand to the jobs of run_dir: scrubbed of secret-looking names and of
    every name the run's secrets reference (read from its plan.json, which holds references, never values)."""
    try:
        saved = RunPaths(run_dir).plan_json().get("secrets", {})
        refs = {name: SecretRef.model_validate(ref) for name, ref in saved.items()}
    except FileNotFoundError:
        refs = {}
    return scrubbed_env(env, referenced_names(refs))


def resolve(name: str, ref: SecretRef, env: Mapping[str, str]) -> str:
    if ref.env is not None:
        value = env.get(ref.env)
        if not value:
            raise PipelineError(f"secret {name}: environment variable {ref.env} is not set in the job",
                                "set it where the job runs, or use `file:` (mode 0600) or `aws_secret:`")
        return value
    if ref.file is not None:
        return _from_file(name, Path(os.path.expanduser(ref.file)))
    assert ref.aws_secret is not None
    return _from_aws(name, ref)


def _from_file(name: str, path: Path) -> str:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PipelineError(f"secret {name}: {path} does not exist") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PipelineError(f"secret {name}: {path} is readable by others (mode {oct(info.st_mode & 0o777)})",
                            f"chmod 600 {path}")
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise PipelineError(f"secret {name}: {path} is empty")
    return value


def _from_aws(name: str, ref: SecretRef) -> str:
    try:
        import boto3  # optional dependency: only jobs that use aws_secret need it
    except ImportError:
        raise PipelineError(f"secret {name}: boto3 is not installed", "pip install 'pipeline[remote]'") from None
    client = boto3.client("secretsmanager", region_name=ref.region)
    try:
        raw = client.get_secret_value(SecretId=ref.aws_secret)["SecretString"]
    except Exception as exc:  # botocore raises many client error types; all mean "no secret"
        raise PipelineError(f"secret {name}: AWS Secrets Manager refused {ref.aws_secret}: {exc}") from None
    if ref.key is None:
        return str(raw)
    try:
        return str(json.loads(raw)[ref.key])
    except (ValueError, KeyError):
        raise PipelineError(f"secret {name}: {ref.aws_secret} has no JSON key {ref.key!r}") from None


def resolve_all(secrets: Mapping[str, SecretRef], env: Mapping[str, str]) -> dict[str, str]:
    return {name: resolve(name, ref, env) for name, ref in secrets.items()}
