#!/usr/bin/env bash
# pipeline llama3-8b-trn1 / stage download (neuron:download)
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
# The dataset first, validated row by row into one JSONL file (a bad row fails here, not on a Trainium node an
# hour into compile); compile, finetune and evaluate read that file, never the Hub.
python -m stages fetch-data \
  --source hf://datasets/databricks/databricks-dolly-15k \
  --format dolly \
  --output "$WORKDIR/data/dataset.jsonl"
# Safetensors as published, no fp32 re-save (defect 15); HF_TOKEN is resolved at run time by the wrapper
# and never written here (defect 3); a missing token or partial download exits non-zero (defect 2).
python -m stages download \
  --source hf://meta-llama/Meta-Llama-3-8B-Instruct \
  --output "$WORKDIR/model_artifacts/"Meta-Llama-3-8B-Instruct \
  --allow-patterns '*.json' \
  --allow-patterns '*.safetensors' \
  --allow-patterns 'tokenizer*' \
  --require-weights
