"""The report as a person sees it: opened in real headless Chromium, screenshotted, no console errors, the
figure present with data, the figure's colours actually on screen."""

from __future__ import annotations

import re

from PIL import Image  # matplotlib's own dependency (pillow), so the report extra brings it

from tests.helpers import run_cli
from tests.report.browser import look

GREEN = (0x2E, 0x7D, 0x32)  # orchestrator/report/figures.py COLOURS["COMPLETED"]
TUNED = (0x5C, 0x6B, 0xC0)  # the evaluation's tuned bars


def test_page_renders_in_chromium_without_errors(two_attempt_run, tmp_path):
    out = tmp_path / "rep"
    assert run_cli("report", two_attempt_run.name, "--out", str(out)) == 0
    shot = tmp_path / "screen.png"
    dom, console = look(out / "report.html", shot)
    assert "Uncaught" not in console and "ERROR:CONSOLE" not in console, console[-2000:]
    svg = dom[dom.index("<svg"):dom.index("</svg>")]
    assert len(re.findall(r"<path\b[^>]* d=\"M", svg)) > 50  # drawn bars, lines and glyphs, not an empty box
    assert "<table" in dom and "passed" in dom and "train" in dom
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1800)
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    assert GREEN in colours and TUNED in colours  # the completed bar and the evaluation bars are visible
