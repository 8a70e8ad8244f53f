"""pipeline: one YAML becomes a chain of Slurm jobs with a state file on shared storage.

Layers (see docs/architecture.md): spec -> plan (pure) -> apply (Scheduler) -> state -> cli.
The orchestrator never imports torch; only programs under stages/ do.
"""

__version__ = "0.1.0"
