"""Spec layer: pydantic models for a pipeline, its stages and a cluster profile, and loading with located errors.

Every model forbids unknown keys: a misspelt key (`nodess: 2`) must fail loudly, not be ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator import memfit, yamlsrc

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_RE, description="letters, digits, '_', '.', '-' (max 64)")]
# Slurm time formats (sbatch --time): MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
SLURM_TIME_RE = r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^UNLIMITED$"
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
# sbatch flags the orchestrator owns: a user value would break dependencies, logs or job tagging.
RESERVED_SBATCH = frozenset(
    {"dependency", "output", "error", "job-name", "comment", "parsable", "hold", "kill-on-invalid-dep",
     "wrap", "open-mode", "array", "signal"}
)


def _no_control(value: str) -> str:
    """A value that reaches an `#SBATCH` line, a command line or a comment in a rendered script must be one line:
    a newline there starts a new directive or command (issue 13 item 7). Quoted values (env, params) may hold any."""
    bad = next((c for c in value if ord(c) < 32 or 127 <= ord(c) < 160), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r}; this value goes into an sbatch line or a "
                         "command line, so it must be a single line of printable text")
    return value


Word = Annotated[str, AfterValidator(_no_control)]
# YAML `nodes: true` or `nodes: "2"` is a mistake, not 1 or 2: integers and booleans are taken as written.
StrictInt = Annotated[int, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    """Slurm resources of one stage. Unset fields fall back to the cluster profile's `defaults`."""

    nodes: Annotated[StrictInt, Field(gt=0, le=4096)] | None = None
    ntasks_per_node: Annotated[StrictInt, Field(gt=0, le=1024)] | None = None
    cpus_per_task: Annotated[StrictInt, Field(gt=0, le=1024)] | None = None
    gpus_per_node: Annotated[StrictInt, Field(ge=0, le=64)] | None = None
    gres: Word | None = None
    mem: Annotated[str, Field(pattern=r"^\d+[KMGT]?$")] | None = None
    time: Annotated[str, Field(pattern=SLURM_TIME_RE)] | None = None
    partition: Word | None = None
    exclusive: StrictBool | None = None
    constraint: Word | None = None
    account: Word | None = None
    qos: Word | None = None
    sbatch: dict[str, str | StrictInt | StrictBool] = Field(default_factory=dict, description="extra sbatch flags")

    @field_validator("sbatch")
    @classmethod
    def _no_reserved(cls, value: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key in value:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                raise ValueError(f"{key!r} is not an sbatch long option name (e.g. 'mail-type')")
            if key in RESERVED_SBATCH:
                raise ValueError(f"--{key} is set by pipeline itself and cannot be overridden")
            if isinstance(value[key], str):
                try:
                    _no_control(str(value[key]))
                except ValueError as exc:
                    raise ValueError(f"--{key}: {exc}") from None
        return value

    def over(self, base: Resources) -> Resources:
        """These resources with unset fields taken from base."""
        merged = {k: v for k, v in base.model_dump().items()}
        for key, value in self.model_dump(exclude_unset=True).items():
            merged[key] = {**base.sbatch, **value} if key == "sbatch" else value
        return Resources.model_validate(merged)


class SecretRef(Strict):
    """Where a secret comes from AT RUN TIME. Its value is never written to scripts, state or logs."""

    env: Annotated[str, Field(pattern=ENV_NAME_RE)] | None = None
    file: str | None = None
    aws_secret: str | None = None
    region: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        sources = [s for s in (self.env, self.file, self.aws_secret) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of env, file or aws_secret")
        return self


class HyperPodTarget(Strict):
    """Reach a SageMaker HyperPod head node through SSM (found with the SageMaker API)."""

    cluster: str = Field(description="HyperPod cluster name")
    region: str | None = None
    controller_group: str = Field("controller-machine", description="instance group of the head node")


class Remote(Strict):
    """Run pipeline commands on a head node over SSH (fabric) instead of locally."""

    host: Word | None = Field(None, description="ssh host or ~/.ssh/config alias; omit with hyperpod")
    user: Word | None = None
    port: Annotated[StrictInt, Field(gt=0, lt=65536)] | None = None
    identity_file: Word | None = None
    pipeline: Word = Field("pipeline", description="the pipeline executable on the head node")
    upload_dir: Word = Field("~/.pipeline/uploads", description="where specs and their files are uploaded")
    hyperpod: HyperPodTarget | None = None

    @model_validator(mode="after")
    def _target(self) -> Remote:
        if (self.host is None) == (self.hyperpod is None):
            raise ValueError("give exactly one of host or hyperpod")
        return self


class ClusterProfile(Strict):
    """Where and how stages run: clusters/<name>.yaml or inline under `cluster:`."""

    name: Name
    scheduler: Literal["slurm", "local"] = "slurm"
    run_root: Word | None = Field(None, description="shared directory for run directories (FSx on HyperPod)")
    python: Word | None = Field(None, description="interpreter with pipeline installed, visible on compute nodes")
    accounting: Literal["auto", "on", "off"] = "auto"
    hyperpod: Literal["auto", "on", "off"] = Field("auto", description="add srun --auto-resume=1 (HyperPod only)")
    defaults: Resources = Field(default_factory=Resources)
    env: dict[Annotated[str, Field(pattern=ENV_NAME_RE)], str] = Field(default_factory=dict)
    remote: Remote | None = Field(None, description="submit from a laptop: run pipeline on this head node")
    node_hour_price: dict[Word, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="price of one node-hour by instance type (key `default`: any other), "
                                          "for the cost column of `pipeline report`")
    instance_type: Word | None = Field(None, description="worker instance type, e.g. p5.48xlarge: its accelerators "
                                                         "and their memory for the memory check at validate")
    accelerator: memfit.Accelerator | None = Field(None, description="the nodes' GPUs/NeuronCores (overrides "
                                                                     "instance_type's)")

    @field_validator("instance_type")
    @classmethod
    def _known_instance(cls, value: str | None) -> str | None:
        if value is not None and value not in memfit.INSTANCE_TYPES:
            raise ValueError(f"unknown instance type {value!r} (known: {', '.join(memfit.INSTANCE_TYPES)}); "
                             "describe its devices with `accelerator: {kind, name, per_node, memory_gib}`")
        return value


LOCAL_CLUSTER = ClusterProfile(name="local", scheduler="local")


class Container(Strict):
    """Run the stage's tasks in a container image through pyxis/enroot (`srun --container-image ...`), as seed
    002's sbatch files do, instead of a venv. A stage's fields override the pipeline's."""

    image: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="enroot image: a .sqsh file or a registry reference (nvcr.io#nvidia/pytorch:24.07-py3)")
    mounts: list[Annotated[str, Field(pattern=r"^/[^,:]*(:/[^,:]*(:[a-z+_-]+)?)?$")]] | None = Field(
        None, description="SRC[:DST[:FLAGS]] absolute paths; every path the stage reads or writes must be inside one")
    workdir: Annotated[str, Field(pattern=r"^/[^,]*$")] | None = Field(None, description="--container-workdir")

    def over(self, base: Container | None) -> Container:
        """These fields with unset ones taken from base (the pipeline's container)."""
        merged = base.model_dump(exclude_none=True) if base else {}
        return Container.model_validate({**merged, **self.model_dump(exclude_none=True)})


class Stage(Strict):
    name: Name
    kind: Name = Field(description="what the stage does, e.g. finetune; `command` runs `run:` as written")
    family: Name | None = Field(None, description="template family; defaults to the pipeline's")
    after: list[Name] | None = Field(None, description="stages this one waits for; default: the previous stage")
    resources: Resources = Field(default_factory=Resources)
    params: dict[str, Any] = Field(default_factory=dict)
    run: str | None = Field(None, description="bash body of a `command` stage")
    outputs: list[str] = Field(default_factory=list, description="paths that must exist when the stage succeeds")
    retries: Annotated[StrictInt, Field(ge=0, le=20)] = 0
    env: dict[Annotated[str, Field(pattern=ENV_NAME_RE)], str] = Field(default_factory=dict)
    container: Container | None = Field(None, description="this stage's container (fields override the pipeline's)")
    cache: StrictBool = Field(True, description="false: never reuse this stage's results from an earlier run")


NotifyEvent = Literal["run_ended", "stage_failed", "stage_requeued"]


class Notify(Strict):
    """Messages to a Slack-compatible incoming webhook ({"text": ...}), sent by the job wrapper itself, so they
    arrive with nobody logged in. The URL is a secret: `webhook` names an entry of `secrets:`."""

    webhook: Annotated[str, Field(pattern=ENV_NAME_RE, description="name of the secret holding the webhook URL")]
    events: list[NotifyEvent] = Field(default_factory=lambda: list(get_args(NotifyEvent)))


class Tracking(Strict):
    """Experiment tracking from the stage programs (stages/tracking.py): MLflow runs named <run id>/<stage>,
    TensorBoard event files or W&B offline runs under the run directory."""

    backend: Literal["mlflow", "tensorboard", "wandb", "off"] = "off"
    uri: Word | None = Field(None, description="MLflow tracking server, e.g. http://mlflow.internal:5000")
    experiment: Word | None = Field(None, description="MLflow experiment; default: the pipeline's name")
    project: Word | None = Field(None, description="W&B project; default: the pipeline's name")
    entity: Word | None = Field(None, description="W&B entity (user or team) the offline run syncs to")

    @model_validator(mode="after")
    def _uri_for_mlflow(self) -> Tracking:
        if self.backend == "mlflow" and not self.uri:
            raise ValueError("tracking: mlflow needs `uri:`, the tracking server every compute node can reach")
        return self


class Sweep(Strict):
    """Variants of one pipeline (issue 14 item 5; docs/sweeps.md): a `grid` (every combination of the listed values)
    or a list of `variants` (each a mapping of key path -> value, with an optional `name`). Key paths name
    `settings.<key>...` or `stages.<stage>.(params|resources|env).<key>...`. Stages that do not depend on a swept
    value run once, shared; every other stage runs once per variant, submitted as one Slurm job array."""

    grid: dict[str, list[Any]] | None = Field(None, description="key path -> the values to try (cartesian product)")
    variants: list[dict[str, Any]] | None = Field(None, description="explicit variants: {name?, <key path>: value}")
    throttle: Annotated[StrictInt, Field(gt=0, le=100000)] | None = Field(
        None, description="at most this many tasks of each array run at once (sbatch --array=0-N%throttle)")


class Pipeline(Strict):
    name: Name
    cluster: Name | ClusterProfile = "local"
    family: Name = "command"
    workdir: Word | None = Field(None, description="artifact root; default <run dir>/work")
    venv: Word | None = Field(None, description="virtualenv activated in every stage")
    env: dict[Annotated[str, Field(pattern=ENV_NAME_RE)], str] = Field(default_factory=dict)
    secrets: dict[Annotated[str, Field(pattern=ENV_NAME_RE)], SecretRef] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict, description="family settings shared by its stages")
    container: Container | None = Field(None, description="run every stage's tasks in this container (pyxis)")
    stages: Annotated[list[Stage], Field(min_length=1)]
    notify: Notify | None = Field(None, description="webhook messages when the run ends, a stage fails or requeues")
    tracking: Tracking = Field(default_factory=Tracking, description="experiment tracking (off by default)")
    sweep: Sweep | None = Field(None, description="variants of this pipeline, run as Slurm job arrays")

    @field_validator("notify")
    @classmethod
    def _notify_secret(cls, value: Notify | None, info: ValidationInfo) -> Notify | None:
        if value is not None and value.webhook not in info.data.get("secrets", {}):
            raise ValueError(f"notify.webhook {value.webhook!r} is not a key of `secrets:`; declare the URL there, "
                             f"e.g. secrets: {{{value.webhook}: {{file: ~/.slack-webhook}}}}")
        return value

    def container_of(self, stage: Stage) -> Container | None:
        if stage.container is None:
            return self.container
        return stage.container.over(self.container)


class Spec:
    """A validated pipeline, its resolved cluster profile and where it came from."""

    def __init__(self, pipeline: Pipeline, cluster: ClusterProfile, source: yamlsrc.Located) -> None:
        self.pipeline = pipeline
        self.cluster = cluster
        self.source = source

    def parents(self) -> dict[str, list[str]]:
        return resolve_after(self.pipeline.stages)


def resolve_after(stages: list[Stage]) -> dict[str, list[str]]:
    """A stage waits for the previous one unless it names `after:` (an empty list means no wait)."""
    parents: dict[str, list[str]] = {}
    for index, stage in enumerate(stages):
        if stage.after is not None:
            parents[stage.name] = list(stage.after)
        else:
            parents[stage.name] = [stages[index - 1].name] if index else []
    return parents
