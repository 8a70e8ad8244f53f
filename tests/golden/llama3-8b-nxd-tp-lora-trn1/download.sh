#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage download (nxd:download)
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
# Safetensors as published, no fp32 re-save (defect 15). HF_TOKEN is resolved at run time by the job wrapper and
# never written here (defect 3); a missing token or a partial download exits non-zero (defect 2).
python -m stages download \
  --source hf://meta-llama/Meta-Llama-3-8B \
  --output "$WORKDIR/model_artifacts/"Meta-Llama-3-8B \
  --allow-patterns '*.json' \
  --allow-patterns '*.safetensors' \
  --allow-patterns 'tokenizer*' \
  --require-weights
