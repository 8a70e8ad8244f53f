#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage inference (nxd:inference)
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
# Local copies only, no Hub re-download (defect 16); base vs fine-tuned answers into a JSON report.
mkdir -p "$WORKDIR/reports"
cat > "$WORKDIR/reports/prompts.json" <<'PIPELINE_PROMPTS_EOF'
["Who are you?"]
PIPELINE_PROMPTS_EOF
python -m stages inference \
  --base "$WORKDIR/model_artifacts/"Meta-Llama-3-8B \
  --model "$WORKDIR/final_model_output" \
  --prompts "$WORKDIR/reports/prompts.json" \
  --max-new-tokens 128 --temperature 0.0 \
  --report "$WORKDIR/reports/inference.json"
