"""The live view of `status --watch` and `submit --wait` (`wait`): on a terminal, one frame redrawn in place
(plain ANSI: cursor up + erase, ECMA-48 CPL/ED) with a progress bar for each stage that reports step/steps;
anywhere else (CI logs, a pipe) the table is appended, and only when it changed."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from orchestrator import status, table
from orchestrator.state import RunPaths
from orchestrator.states import JobState

BAR_WIDTH = 30
TTY_POLL_CAP_S = 5.0  # a bar that moves is worth a poll every few seconds; a log file is not


class Screen:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.drawn = 0  # lines of the previous frame, to move back over
        self.last = ""

    def poll_cap(self, cap_s: float) -> float:
        return min(cap_s, TTY_POLL_CAP_S) if self.tty else cap_s

    def show(self, table: str, view: status.RunView) -> None:
        if not self.tty:
            if table != self.last:
                print(table, file=self.stream, flush=True)
                self.last = table
            return
        width = shutil.get_terminal_size((120, 24)).columns
        stamp = f"  updated {time.strftime('%H:%M:%S')}  (Ctrl-C leaves; the run goes on)"
        lines = [*table.splitlines(), *bars(view), stamp]
        frame = "".join(line[:width - 1] + "\n" for line in lines)  # no wrapping: the line count stays exact
        back = f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""
        self.stream.write(back + frame)
        self.stream.flush()
        self.drawn = len(lines)


def bars(view: status.RunView) -> list[str]:
    """A bar for every stage whose current attempt reported step and steps."""
    out = []
    for name, stage in view.state.stages.items():
        data = status.progress(RunPaths(view.run_dir), name, stage.current)
        bar = progress_bar(data)
        if bar:
            out.append(f"  {name:<16} {bar}")
    return out


def progress_bar(data: dict[str, Any] | None) -> str:
    if not data or not isinstance(data.get("step"), int) or not isinstance(data.get("steps"), int):
        return ""
    steps = max(1, data["steps"])
    done = min(1.0, max(0.0, data["step"] / steps))
    filled = round(done * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done:4.0%}  {status.progress_note(data)}"


def wait(run_dir: Path, quiet: bool = False, cap_s: float = 30.0) -> int:
    """Poll with backoff (1, 2, 4 ... cap) until every stage is terminal; exit 0 only if all COMPLETED."""
    delay = 1.0
    screen = Screen()  # redraws in place on a terminal, appends changed tables elsewhere
    while True:
        view = status.refresh([run_dir])[0]
        if not quiet:
            screen.show(table.run_table(view), view)
        states = [s.state for s in view.state.stages.values()]
        if all(s.terminal or s is JobState.NOT_SUBMITTED for s in states):  # a failed query shows UNKNOWN
            return 0 if all(s.ok for s in states) else 1
        time.sleep(delay)
        delay = min(screen.poll_cap(cap_s), delay * 2)
