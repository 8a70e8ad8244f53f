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
# final/ or the newest checkpoint-<N> whose NxD `done` marker exists, found at run time: never a hard-coded
# checkpoint-1251 (defect 1); that folder goes to `optimum-cli neuron consolidate` as upstream passes it (defect 14).
python -m stages consolidate --family neuron --neuron-sdk gen2 \
  --checkpoints "$WORKDIR/model_checkpoints" \
  --output "$WORKDIR/adapter_consolidated"
