#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage evaluate (nxd:evaluate)
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
# A verdict on the Trainium node (on its CPUs: no Neuron graph to compile): held-out loss of the merged model vs
# the base on the rows prepare_data kept out of training (same file, --eval-fraction and --seed as nxd-data), a
# report, and exit 3 unless tuned < base x 0.98 (stages.md defect 16).
mkdir -p "$WORKDIR/reports"
python -m stages evaluate \
  --model "$WORKDIR/final_model_output" \
  --compare-to "$WORKDIR/model_artifacts/"Meta-Llama-3-8B \
  --data "$WORKDIR/data/task_rows.jsonl" --format dolly \
  --eval-fraction 0.05 --seed 42 --seq-len 2048 \
  --max-loss-ratio 0.98 \
  --report "$WORKDIR/reports/evaluate.json"
