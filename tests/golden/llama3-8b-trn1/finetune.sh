#!/usr/bin/env bash
# pipeline llama3-8b-trn1 / stage finetune (neuron:finetune)
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
export MALLOC_ARENA_MAX=70  # must be exported before torchrun (defect 23)
export OMP_NUM_THREADS=1
export NEURON_FUSE_SOFTMAX=1
export NEURON_RT_STOCHASTIC_ROUNDING_EN=1
export NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=5
export FI_PROVIDER=efa
# compile and train share one cache keyed by every graph-changing setting (aws-neuron-sdk parallel compile docs).
export NEURON_COMPILE_CACHE_URL="$WORKDIR/"cache/neuron_compile_cache/Meta-Llama-3-8B-Instruct-638d06d756
export NEURON_CC_FLAGS="--model-type=transformer --distribution-strategy=llm-training --enable-saturate-infinity --cache_dir=$NEURON_COMPILE_CACHE_URL"
# The mode is always set explicitly; stages.neuron_finetune rejects anything but "0" or "1" (defect 6).
export NEURON_EXTRACT_GRAPHS_ONLY=0
OUT="$WORKDIR/model_checkpoints"
FINAL="$WORKDIR/model_checkpoints/final"
MAX_STEPS=-1
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
    export PIPELINE_RDZV_PORT=$(( 29400 + SLURM_JOB_ID % 1000 ))
    SRUN_FLAGS=(--ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
    # HyperPod's SPANK plugin restarts the step on a replaced node; the flag exists only there.
    if [[ -d /opt/sagemaker_cluster ]]; then SRUN_FLAGS+=(--auto-resume=1); fi
    exec srun "${SRUN_FLAGS[@]}" bash "$0" --task
  fi
  export PIPELINE_HEAD_ADDR=127.0.0.1 PIPELINE_NNODES=1 PIPELINE_RDZV_ID="local-$$" PIPELINE_RDZV_PORT=29400
  exec bash "$0" --task
fi

torchrun --nnodes="$PIPELINE_NNODES" --nproc_per_node=32 --rdzv_backend=c10d --rdzv_endpoint="$PIPELINE_HEAD_ADDR:$PIPELINE_RDZV_PORT" --rdzv_id="$PIPELINE_RDZV_ID" --rdzv_conf=is_host=$(( ${SLURM_NODEID:-0} == 0 )) -m stages neuron-finetune \
  --model "$WORKDIR/model_artifacts/"Meta-Llama-3-8B-Instruct \
  --dataset "$WORKDIR/data/dataset.jsonl" --chat-data "$WORKDIR/data/dataset.chat.jsonl" \
  --eval-fraction 0.01 --seed 42 \
  --output-dir "$OUT" --final-dir "$FINAL" --max-steps "$MAX_STEPS" \
  --tensor-parallel-size 8 \
  --max-seq-length 2048 --packing \
  --per-device-train-batch-size 1 \
  --gradient-accumulation-steps 3 \
  --learning-rate 2e-05 --warmup-steps 100 \
  --weight-decay 0.01 --num-train-epochs 1 \
  --save-steps 400 --logging-steps 1 \
  --lora-r 16 --lora-alpha 16 --lora-dropout 0.05 \
  --lora-target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  --system-prompt 'You are a helpful assistant.' --sdk gen2 --bf16

