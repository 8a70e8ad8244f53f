#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage export_adapter (nxd:export_adapter)
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
# NxD adapter -> PEFT adapter (defect 13): the TP rank files gathered (NxD 2.28 layout, see stages/nxd_adapter.py),
# NxD field names mapped, peft_type/task_type/base model written, a fused qkv_proj split exactly into q/k/v (no
# averaging, defect 18), the KV replication dropped, shapes checked against the base model's config.
python -m stages nxd-adapter export \
  --adapter-dir "$WORKDIR/nxd_finetune/lora_adapter" --tag lora \
  --tp-size 32 --kv-replicator 4 \
  --base-model "$WORKDIR/model_artifacts/"Meta-Llama-3-8B \
  --base-model-id meta-llama/Meta-Llama-3-8B \
  --output "$WORKDIR/adapter_peft"
