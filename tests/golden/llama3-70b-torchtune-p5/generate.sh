#!/usr/bin/env bash
# pipeline llama3-70b-torchtune / stage generate (torchtune:generate)
# Rendered by `pipeline render`; runs under pipeline's job wrapper, which sets PIPELINE_RUN_DIR,
# PIPELINE_STAGE, PIPELINE_STAGES_PATH and the run-time secrets. Slurm resources are sbatch flags of the job.
set -euo pipefail
: "${PIPELINE_RUN_DIR:?run this script through pipeline: PIPELINE_RUN_DIR is unset}"
WORKDIR=/fsx/ubuntu/torchtune-llama3-70b
mkdir -p "$WORKDIR"
cd "$WORKDIR"
export FI_EFA_SET_CUDA_SYNC_MEMOPS=0
export FI_EFA_USE_HUGE_PAGE=0
export FI_PROVIDER=efa
export NCCL_SOCKET_IFNAME='^docker,lo,veth'
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# Every stage activates the env itself: sbatch's default --export=ALL would otherwise run whatever
# venv the submitter had active (stages.md defect 4).
source /fsx/ubuntu/torchtune-llama3-70b/venv/bin/activate
export PYTHONPATH="${PIPELINE_STAGES_PATH:-}${PYTHONPATH:+:$PYTHONPATH}"
# The newest epoch_<N>/ the finetune wrote, found now rather than named in advance (stages.md defects 1, 21).
SOURCE_DIR="$WORKDIR/tuned/lora"
NEWEST=$(find "$SOURCE_DIR" -maxdepth 1 -type d -name 'epoch_*' -printf '%f\n' 2>/dev/null | sort -t_ -k2 -n | tail -n 1)
if [[ -z "$NEWEST" ]]; then
  echo "error: no epoch_<N>/ under $SOURCE_DIR: did the finetune stage finish?" >&2
  exit 2
fi
EPOCH="$SOURCE_DIR/$NEWEST"

REPORT="$WORKDIR/reports/generate"
mkdir -p "$REPORT"
# The whole torchtune config, from the spec's settings with the pinned release's component paths; the
# run-time paths and the checkpoint files actually present are merged in, and `tune validate` instantiates
# nothing but checks every component resolves before the GPUs are touched (stages.md defect 20).
CONFIG="$PIPELINE_RUN_DIR/torchtune/generate.yaml"
python -m stages tune-config --output "$CONFIG" --checkpoint-dir "$EPOCH" \
  --tokenizer "$WORKDIR/model/original/tokenizer.model" \
  --set output_dir="$REPORT" --set checkpointer.output_dir="$REPORT" <<'PIPELINE_TUNE_CONFIG'
{
  "tokenizer": {
    "_component_": "torchtune.models.llama3.llama3_tokenizer",
    "max_seq_len": 4096
  },
  "checkpointer": {
    "_component_": "torchtune.training.FullModelHFCheckpointer",
    "model_type": "LLAMA3",
    "recipe_checkpoint": null
  },
  "seed": 1234,
  "dtype": "bf16",
  "model": {
    "_component_": "torchtune.models.llama3.llama3_70b"
  },
  "device": "cpu",
  "prompt": {
    "system": null,
    "user": "Hello, my name is"
  },
  "max_new_tokens": 300,
  "temperature": 0.6,
  "top_k": 300,
  "enable_kv_cache": true,
  "quantizer": null
}
PIPELINE_TUNE_CONFIG
tune validate "$CONFIG"
# The generate recipe only logs the text: keep the log, and the text itself in generated.txt.
tune run generate --config "$CONFIG" 2>&1 | tee "$REPORT/generate.log"
python -m stages tune-report --generated "$REPORT/generate.log" --output "$REPORT/generated.txt"
