#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage prepare_data (nxd:prepare_data)
# Rendered by `pipeline render`; runs under pipeline's job wrapper, which sets PIPELINE_RUN_DIR,
# PIPELINE_STAGE, PIPELINE_STAGES_PATH and the run-time secrets. Slurm resources are sbatch flags of the job.
set -euo pipefail
: "${PIPELINE_RUN_DIR:?run this script through pipeline: PIPELINE_RUN_DIR is unset}"
WORKDIR=/fsx/ubuntu/nxd_lora
mkdir -p "$WORKDIR"
cd "$WORKDIR"
# Every stage activates the env itself: sbatch's default --export=ALL would otherwise run whatever
# venv the submitter had active (stages.md defect 4).
source /fsx/ubuntu/nxd_lora/env_nxd_ptl/bin/activate
export PYTHONPATH="${PIPELINE_STAGES_PATH:-}${PYTHONPATH:+:$PYTHONPATH}"
# The trainer's data with an eval split held out of it, so that the evaluate stage's verdict is on rows the model
# never saw. NxD 2.28's create_instruction_based_dataset (examples/training/llama/training_utils.py) reads an
# existing directory with datasets.load_from_disk(dir)["train"] and keeps the rows whose category is --task:
# nxd-data writes exactly that, minus the rows `stages evaluate` holds out of data/task_rows.jsonl with the same
# --eval-fraction and --seed. HF_TOKEN, when the dataset needs one, is read at run time, never written here.
python -m stages fetch-data \
  --source hf://datasets/databricks/databricks-dolly-15k --format dolly \
  --output "$WORKDIR/data/source.jsonl"
python -m stages nxd-data \
  --data "$WORKDIR/data/source.jsonl" --task open_qa \
  --eval-fraction 0.05 --seed 42 \
  --rows "$WORKDIR/data/task_rows.jsonl" --train-dir "$WORKDIR/data/nxd_train"
