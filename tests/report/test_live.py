"""`status --watch` under a real pseudo-terminal (python's pty): one frame redrawn in place with a progress bar;
the same command into a pipe appends plain tables (CI logs) with no escape codes."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.helpers import latest_run, run_cli

REPO = Path(__file__).resolve().parents[2]
SLOW = ("from stages.common import progress; import time; "
        "[(progress(step=s, steps=4, loss=4.0 / s), time.sleep(1.5)) for s in range(1, 5)]")


def watch_on_tty(run: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))  # rows, columns
    child = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "status", "--watch", run], cwd=REPO,
                             stdin=slave, stdout=slave, stderr=slave, env=dict(os.environ), close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif child.poll() is not None:
            break
    os.close(master)
    return child.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_watch_redraws_in_place_on_a_tty_and_appends_in_a_pipe(write_spec):
    path = write_spec(f"""
        name: live
        stages:
          - {{name: train, kind: command, run: "{sys.executable} -c \\"{SLOW}\\""}}
    """)
    assert run_cli("submit", str(path)) == 0
    run = latest_run().name
    piped = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "status", "--watch", run], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rc, screen = watch_on_tty(run)
    assert rc == 0, screen
    frames = screen.count("\x1b[J")
    assert frames >= 2 and screen.count("\x1b[") == 2 * frames  # each redraw: cursor up N lines, erase below
    last = screen.rsplit("\x1b[J", 1)[-1]
    assert "COMPLETED" in last and "[" + "#" * 30 + "] 100%" in last and "step 4/4" in last
    assert re.search(r"\[#{5,25}\.{5,25}\] +\d\d%  step [123]/4", screen)  # the bar seen part way
    assert "\r\n" in screen  # the pty's own line discipline, i.e. a real terminal
    out, _ = piped.communicate(timeout=60)
    assert piped.returncode == 0 and "\x1b" not in out and "#" not in out
    tables = out.count("STAGE ")
    assert tables >= 2 and out.rstrip().endswith("step 4/4 loss 1")
