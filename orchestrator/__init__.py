"""pipeline: one YAML becomes a chain of Slurm jobs with a state file on shared storage.

Layers (see docs/architecture.md): spec -> plan (pure) -> apply (Scheduler) -> state -> cli.
The orchestrator never imports torch; only programs under stages/ do.
"""

from pathlib import Path

__version__ = "0.1.0"
# The folder holding the `stages` package: jobs put it on PYTHONPATH (jobside), containers must mount it.
STAGES_PATH = str(Path(__file__).resolve().parent.parent)
