#!/usr/bin/env bash
# pipeline llama3-70b-torchtune / stage evaluate (torchtune:evaluate)
# Rendered by `pipeline render`; runs under pipeline's job wrapper, which sets PIPELINE_RUN_DIR,
# PIPELINE_STAGE, PIPELINE_STAGES_PATH and the run-time secrets. Slurm resources are sbatch flags of the job.
set -euo pipefail
: "${PIPELINE_RUN_DIR:?run this script through pipeline: PIPELINE_RUN_DIR is unset}"
# In a container (pyxis/enroot, seed 002's way): this script re-runs itself as one task inside the image.
if [[ -z "${PIPELINE_IN_CONTAINER:-}" ]]; then
  export PIPELINE_IN_CONTAINER=1
  exec srun --ntasks=1 --nodes=1 --container-image=/fsx/ubuntu/images/pytorch-torchtune.sqsh --container-mounts=/fsx:/fsx --container-workdir=/fsx/ubuntu/torchtune-llama3-70b bash "$0" "$@"
fi
WORKDIR=/fsx/ubuntu/torchtune-llama3-70b
mkdir -p "$WORKDIR"
cd "$WORKDIR"
export FI_EFA_SET_CUDA_SYNC_MEMOPS=0
export FI_EFA_USE_HUGE_PAGE=0
export FI_PROVIDER=efa
export NCCL_SOCKET_IFNAME='^docker,lo,veth'
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export PYTHONPATH="${PIPELINE_STAGES_PATH:-}${PYTHONPATH:+:$PYTHONPATH}"
# The newest epoch_<N>/ the finetune wrote, found now rather than named in advance (stages.md defects 1, 21).
SOURCE_DIR="$WORKDIR/tuned/lora"
NEWEST=$(find "$SOURCE_DIR" -maxdepth 1 -type d -name 'epoch_*' -printf '%f\n' 2>/dev/null | sort -t_ -k2 -n | tail -n 1)
if [[ -z "$NEWEST" ]]; then
  echo "error: no epoch_<N>/ under $SOURCE_DIR: did the finetune stage finish?" >&2
  exit 2
fi
EPOCH="$SOURCE_DIR/$NEWEST"

REPORT="$WORKDIR/reports/evaluate"
mkdir -p "$REPORT"
echo "evaluating $EPOCH on cpu"
# The whole torchtune config, from the spec's settings with the pinned release's component paths; the
# run-time paths and the checkpoint files actually present are merged in, and `tune validate` instantiates
# nothing but checks every component resolves before the GPUs are touched (stages.md defect 20).
CONFIG="$PIPELINE_RUN_DIR/torchtune/evaluate.yaml"
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
  "tasks": [
    "truthfulqa_mc2"
  ],
  "limit": null,
  "max_seq_length": 4096,
  "batch_size": 8,
  "device": "cpu",
  "enable_kv_cache": true,
  "quantizer": null
}
PIPELINE_TUNE_CONFIG
tune validate "$CONFIG"
# eleuther_eval only logs lm_eval's results table: keep the log, and turn the table into metrics.json.
# torchtune 0.6.1's eval wrapper also builds lm_eval's HFLM("gpt2") (recipes/eleuther_eval.py), which loads GPT-2
# from the Hub: the node needs the Hub, or gpt2 already in its HF cache (then set HF_HUB_OFFLINE=1 in env).
tune run eleuther_eval --config "$CONFIG" 2>&1 | tee "$REPORT/eleuther_eval.log"
python -m stages tune-report --eval "$REPORT/eleuther_eval.log" --output "$REPORT/metrics.json"
