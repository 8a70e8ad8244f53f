"""A real two-attempt run on the local backend for the report tests: `train` logs steps 1-5 and fails, the
rerun resumes at step 6 and finishes at 10; `evaluate` writes a report in stages/evaluate.py's layout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import latest_run, run_cli, wait_terminal

# Sleeps past the records' one-second timestamps, so elapsed time and CPU efficiency are never 0 by rounding.
TRAIN = ("from stages.common import metric; import os, sys, time; first = not os.path.exists('resumed'); "
         "time.sleep(1.2); "
         "[metric(step=s, steps=10, loss=3.0 / s, lr=1e-3 * (11 - s) / 10, tokens_per_s=100.0) "
         "for s in (range(1, 6) if first else range(6, 11))]; open('resumed', 'w').close(); sys.exit(3 if first else 0)")
# The keys stages/evaluate.py writes (tuned/base: loss, perplexity, exact_match; loss_ratio, max_loss_ratio, passed).
EVALUATE = ("import json, os; os.makedirs('reports', exist_ok=True); json.dump({'tuned': {'loss': 1.2, "
            "'perplexity': 3.3, 'exact_match': 0.5}, 'base': {'loss': 2.0, 'perplexity': 7.4, 'exact_match': 0.0}, "
            "'loss_ratio': 0.6, 'max_loss_ratio': 0.95, 'passed': True}, open('reports/evaluate.json', 'w'))")


@pytest.fixture
def two_attempt_run(write_spec: Callable[[str, str], Path]) -> Path:
    py = sys.executable
    path = write_spec(f"""
        name: reported
        cluster: {{name: local, scheduler: local, node_hour_price: {{default: 3.6}}}}
        stages:
          - {{name: train, kind: command, run: "{py} -c \\"{TRAIN}\\""}}
          - {{name: evaluate, kind: command, run: "{py} -c \\"{EVALUATE}\\""}}
    """)
    assert run_cli("submit", str(path)) == 0
    run_dir = latest_run()
    wait_terminal(run_dir)
    assert run_cli("rerun", run_dir.name) == 0
    states = wait_terminal(run_dir)
    assert {s.value for s in states.values()} == {"COMPLETED"}, states
    return run_dir
