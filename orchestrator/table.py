"""The text tables of `status` and `list`: one line a stage (state, job, nodes, elapsed, exit code and a note on
what to look at next), one line a run."""

from __future__ import annotations

from orchestrator import status, sweepview
from orchestrator.scheduler import short_id
from orchestrator.state import RunPaths, StageState
from orchestrator.states import JobState


def run_table(view: status.RunView) -> str:
    st = view.state
    lines = [f"run {st.run_id}  pipeline {st.pipeline}  cluster {st.cluster} ({st.scheduler})  {view.run_dir}"]
    if view.warning:
        lines.append(f"warning: {view.warning}")
    lines.append(f"  {'STAGE':<16} {'STATE':<14} {'JOB':<10} {'NODES':<14} {'ELAPSED':>9} {'EXIT':>4}  NOTE")
    matrix = sweepview.lines(view.run_dir, st)  # a sweep: its variants x stages matrix follows the table
    for name, stage in st.stages.items():
        if matrix and stage.state.ok and sweepview.in_matrix(name):
            continue  # shown in the matrix; a variant stage that did not succeed keeps its row and its note
        cur = stage.current
        if cur is None:
            lines.append(f"  {name:<16} {stage.state.value:<14}")
            continue
        exit_code = "" if cur.exit_code is None else str(cur.exit_code)
        lines.append(f"  {name:<16} {stage.state.value:<14} {short_id(cur.job_id):<10} {cur.nodes or '':<14} "
                     f"{status.elapsed(cur):>9} {exit_code:>4}  {stage_note(view, name, stage)}")
    return "\n".join(lines + matrix)


def stage_note(view: status.RunView, name: str, stage: StageState) -> str:
    """The NOTE column: why it waits, how far it got, where its tracker is, what to run when it failed."""
    cur = stage.current
    if cur is None:
        return ""
    note = cur.reason or ""
    if stage.state is JobState.PENDING and not note:  # Slurm gives no reason between scheduling passes
        note = "requeued; waiting to run again" if cur.restarts else "waiting"
    done = status.progress_note(status.progress(RunPaths(view.run_dir), name, cur))
    if done:  # how far the program got: while it runs, after it ends, and where a failed one stopped
        note = f"{note}; reached {done}" if note else done
    link = status.tracking_link(RunPaths(view.run_dir), name, cur)
    if link:
        note = f"{note}; tracker: {link}" if note else f"tracker: {link}"
    if stage.state.terminal and not stage.state.ok and stage.state is not JobState.CANCELLED:
        note = (note + f"; see: pipeline logs {view.state.run_id} {name}").lstrip("; ")
    restarted = status.restart_note(cur)
    if restarted:
        note = f"{restarted}; {note}".rstrip("; ")
    if len(stage.attempts) > 1:
        note = f"attempt {len(stage.attempts)}; {note}".rstrip("; ")
    if view.state.spec_version > 1:  # re-planned with `rerun --spec`: which spec this attempt ran with
        note = f"spec {cur.spec_version or 1}; {note}".rstrip("; ")
    return note


def run_line(view: status.RunView) -> str:
    """`pipeline list`: run id, creation time and how many stages are in each state."""
    counts: dict[str, int] = {}
    for stage in view.state.stages.values():
        counts[stage.state.value] = counts.get(stage.state.value, 0) + 1
    summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    return f"{view.state.run_id:<48} {view.state.created:<26} {summary}"
