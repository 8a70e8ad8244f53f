#!/usr/bin/env bash
# pipeline llama3-8b-trn1 / stage evaluate (neuron:evaluate)
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
# A verdict, not a printout: held-out loss of the merged model vs the base on the rows finetune held out (the
# same rows, split and chat prompt: data/dataset.chat.jsonl is written by the finetune program). Runs on the
# node's CPUs; exits non-zero unless the tuned loss is below base x 0.97.
mkdir -p "$WORKDIR/reports"
python -m stages evaluate \
  --model "$WORKDIR/final_model_output" \
  --compare-to "$WORKDIR/model_artifacts/"Meta-Llama-3-8B-Instruct \
  --data "$WORKDIR/data/dataset.chat.jsonl" --format chat \
  --eval-fraction 0.01 --seed 42 --seq-len 2048 \
  --max-loss-ratio 0.97 \
  --report "$WORKDIR/reports/evaluate.json"
