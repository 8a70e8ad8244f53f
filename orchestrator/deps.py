"""Which job a stage being submitted waits for, one parent at a time: shared by apply (one job a stage) and arrays
(a sweep's job arrays, paired per variant), so neither imports the other."""

from __future__ import annotations

from orchestrator.errors import PipelineError
from orchestrator.state import RunState


def dependency_id(state: RunState, name: str, parent: str, submitted: dict[str, str]) -> str | None:
    """The job `name` must wait for to have `parent` done: the one just submitted for it, or its live job; none
    when it is already done (Slurm rejects dependencies on purged jobs, desihub/desispec#2350). A parent that
    ended unsuccessfully cannot be waited for: rerun it too."""
    if parent in submitted:
        return submitted[parent]
    parent_state = state.stages[parent]
    current = parent_state.current
    if parent_state.state.ok:
        return None
    if current is not None and parent_state.state.active:
        return current.job_id
    raise PipelineError(f"stage {name} needs {parent}, which is {parent_state.state.value}",
                        f"rerun {parent} too: pipeline rerun {state.run_id} --stage {parent}")
