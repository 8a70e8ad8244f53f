#!/usr/bin/env bash
# pipeline llama3-8b-trn1 / stage consolidate (neuron:consolidate)
# Rendered by `pipeline render`; runs under pipeline's job wrapper, which sets PIPELINE_RUN_DIR,
# PIPELINE_STAGE, PIPELINE_STAGES_PATH and the run-time secrets. Slurm resources are sbatch flags of the job.
set -euo pipefail
: "${PIPELINE_RUN_DIR:?run this script through pipeline: PIPELINE_RUN_DIR is unset}"
WORKDIR=/fsx/ubuntu/peft_ft
mkdir -p "$WORKDIR"
cd "$WORKDIR"
# Every stage activates the env itself: sbatch's default --export=ALL would otherwise run whatever
# venv the submitter had active (stages.md defect 4).
source /fsx/ubuntu/peft_ft/env_llama3_8B_peft/bin/activate
export PYTHONPATH="${PIPELINE_STAGES_PATH:-}${PYTHONPATH:+:$PYTHONPATH}"
# Finds the newest completed checkpoint-<N> (with its `done` marker) itself: never a hard-coded
# checkpoint-1251 (defect 1); locates adapter files per optimum-neuron version (defect 14).
python -m stages consolidate --family neuron \
  --checkpoints "$WORKDIR/model_checkpoints" \
  --output "$WORKDIR/adapter_consolidated"
