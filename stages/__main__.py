"""`python -m stages <name> [flags]`: one entry point for every stage program."""

from __future__ import annotations

import importlib
import sys

PROGRAMS = {
    "make-tiny": "stages.tiny",
    "download": "stages.download",
    "fetch-data": "stages.fetch_data",
    "finetune": "stages.finetune",
    "consolidate": "stages.consolidate",
    "merge": "stages.merge",
    "evaluate": "stages.evaluate",
    "inference": "stages.inference",
    "neuron-finetune": "stages.neuron_finetune",
    "nxd-adapter": "stages.nxd_adapter",
    "nxd-data": "stages.nxd_data",
    "upload": "stages.upload",
    "tune-config": "stages.tune_config",
    "tune-report": "stages.tune_report",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in PROGRAMS:
        print(f"usage: python -m stages {{{','.join(PROGRAMS)}}} [flags]", file=sys.stderr)
        return 2
    module = importlib.import_module(PROGRAMS[argv[0]])
    result: int = module.main(argv[1:])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
