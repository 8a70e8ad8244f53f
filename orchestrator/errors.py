"""One exception base. Every expected failure is a PipelineError whose message says what to do next."""

from __future__ import annotations


class PipelineError(Exception):
    """An expected failure: printed as one clear message by the CLI (exit 1), never as a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class SpecError(PipelineError):
    """The pipeline YAML or a cluster profile is invalid. Nothing was submitted."""


class RenderError(PipelineError):
    """A template could not be rendered (missing variable, unknown template)."""


class SchedulerError(PipelineError):
    """The scheduler refused or failed a request (sbatch, sacct, scancel, ...)."""


class StateError(PipelineError):
    """The run directory or state file is missing, locked too long, or unreadable."""


class PartlySubmitted(PipelineError):
    """A submit failed after its run directory was created: the run exists (`run_id`) and is partly queued."""

    def __init__(self, run_id: str, message: str, hint: str) -> None:
        self.run_id = run_id
        super().__init__(message, hint)


class CommandError(PipelineError):
    """An external command exited non-zero; the message carries argv, exit code and output."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str, hint: str | None = None):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr.strip() or stdout.strip())[-800:]
        super().__init__(f"command {' '.join(argv)!s} exited {returncode}: {tail}", hint)
