#!/usr/bin/env bash
# pipeline llama3-70b-torchtune / stage full (torchtune:finetune)
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
TUNED="$WORKDIR/tuned/full"
if [[ "${1:-}" != "--task" ]]; then  # once per job, on the batch host, before the tasks start
mkdir -p "$TUNED"
# The whole torchtune config, from the spec's settings with the pinned release's component paths; the
# run-time paths and the checkpoint files actually present are merged in, and `tune validate` instantiates
# nothing but checks every component resolves before the GPUs are touched (stages.md defect 20).
CONFIG="$PIPELINE_RUN_DIR/torchtune/full.yaml"
python -m stages tune-config --output "$CONFIG" --checkpoint-dir "$WORKDIR/model" \
  --tokenizer "$WORKDIR/model/original/tokenizer.model" \
  --set output_dir="$TUNED" --set checkpointer.output_dir="$TUNED" --set metric_logger.log_dir="$TUNED/logs" \
  --resume-if "$TUNED/recipe_state/recipe_state.pt" <<'PIPELINE_TUNE_CONFIG'
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
  "resume_from_checkpoint": false,
  "save_adapter_weights_only": false,
  "dataset": {
    "_component_": "torchtune.datasets.alpaca_dataset",
    "packed": false
  },
  "shuffle": true,
  "batch_size": 2,
  "epochs": 1,
  "max_steps_per_epoch": null,
  "gradient_accumulation_steps": 1,
  "optimizer": {
    "_component_": "torch.optim.AdamW",
    "lr": 2e-05,
    "weight_decay": 0.0,
    "fused": true
  },
  "loss": {
    "_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"
  },
  "clip_grad_norm": null,
  "compile": false,
  "device": "cuda",
  "enable_activation_checkpointing": true,
  "enable_activation_offloading": false,
  "fsdp_cpu_offload": true,
  "custom_sharded_layers": [
    "tok_embeddings",
    "output"
  ],
  "optimizer_in_bwd": false,
  "metric_logger": {
    "_component_": "torchtune.training.metric_logging.DiskLogger"
  },
  "log_every_n_steps": 1,
  "log_peak_memory_stats": true
}
PIPELINE_TUNE_CONFIG
tune validate "$CONFIG"
fi
if [[ "${1:-}" != "--task" ]]; then
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    # NodeAddr, not the node name: names need not resolve, and torchrun must never use localhost
    # on a multi-node job (pytorch/pytorch#76069).
    HEAD_ADDR=$(scontrol show node "$HEAD_NODE" -o | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
    export PIPELINE_HEAD_ADDR="${HEAD_ADDR:-$HEAD_NODE}"
    export PIPELINE_NNODES="$SLURM_JOB_NUM_NODES"
    export PIPELINE_RDZV_ID="$SLURM_JOB_ID"
    # Same port on every node of a job; offset by job id so two jobs sharing a host do not collide.
    export PIPELINE_RDZV_PORT=$(( 29500 + SLURM_JOB_ID % 1000 ))
    SRUN_FLAGS=(--ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
    # HyperPod's SPANK plugin restarts the step on a replaced node; the flag exists only there.
    if [[ -d /opt/sagemaker_cluster ]]; then SRUN_FLAGS+=(--auto-resume=1); fi
    exec srun "${SRUN_FLAGS[@]}" bash "$0" --task
  fi
  export PIPELINE_HEAD_ADDR=127.0.0.1 PIPELINE_NNODES=1 PIPELINE_RDZV_ID="local-$$" PIPELINE_RDZV_PORT=29500
  exec bash "$0" --task
fi

# torchtune's own launcher is torchrun: `tune run` takes torchrun's flags, the shared launcher's set.
tune run --nnodes="$PIPELINE_NNODES" --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint="$PIPELINE_HEAD_ADDR:$PIPELINE_RDZV_PORT" --rdzv_id="$PIPELINE_RDZV_ID" --rdzv_conf=is_host=$(( ${SLURM_NODEID:-0} == 0 )) \
  full_finetune_distributed --config "$PIPELINE_RUN_DIR/torchtune/full.yaml"
