"""Headless Chromium (Debian package `chromium`) for looking at the report as a person would; installed with
apt-get as root when missing, as orchestrator/devcluster.py installs Slurm, so a fresh CI machine works."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from orchestrator import proc

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files",
         "--no-first-run", "--disable-extensions", "--disable-background-networking"]


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("chromium is not installed and this is not root: apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = proc.run(argv, env=env, timeout=900, check=False)
        assert done.returncode == 0, f"{' '.join(argv)} failed: {done.stderr[-500:]}"
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium but it is not on PATH")


def look(page: Path, screenshot: Path, size: str = "1200,1800") -> tuple[str, str]:
    """Render the page: write a screenshot, return (the DOM after load, the browser's console log on stderr)."""
    binary = chromium()
    home = page.parent / ".chromium-profile"  # its own profile: no state from other runs, nothing in ~
    common = [binary, *FLAGS, f"--user-data-dir={home}", "--enable-logging=stderr", "--v=0"]
    shot = proc.run([*common, f"--screenshot={screenshot}", f"--window-size={size}", page.as_uri()], timeout=120)
    dom = proc.run([*common, "--dump-dom", page.as_uri()], timeout=120)
    return dom.stdout, shot.stderr + dom.stderr
