#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage merge (nxd:merge)
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
# PEFT's own loader on the exported adapter, bf16, tokenizer saved, merged logits checked (defect 15).
python -m stages merge \
  --base "$WORKDIR/model_artifacts/"Meta-Llama-3-8B \
  --adapter "$WORKDIR/adapter_peft" \
  --output "$WORKDIR/final_model_output" \
  --dtype bf16
