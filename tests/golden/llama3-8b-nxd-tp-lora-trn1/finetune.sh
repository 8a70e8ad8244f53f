#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage finetune (nxd:finetune)
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
# NxD's PTL LoRA trainer (stages.md 3.2-3.4) with the reference launcher's defects fixed: one torchrun per node
# with a real rendezvous and NEURON_RT_ROOT_COMM_ID on the head address, never localhost (defects 8, 9); memory
# variables exported before torchrun (defect 23); the four LoRA save fields rendered explicitly and an explicit
# working directory, so lora_adapter/ lands where export_adapter looks (defect 12). Every flag exists in NxD 2.28's
# lightning/tp_llama_hf_finetune_ptl.py argparse; --use_gpu_compatible_precision 0 because its default 1 asks for
# master weights, which NxD's optimizer setup refuses without ZeRO-1 (trainer/trainer.py; upstream's
# test_llama_lora_finetune.sh passes 0 too).
NXD_EXAMPLES=/fsx/ubuntu/neuronx-distributed/examples/training/llama
TRAINER="$NXD_EXAMPLES/lightning/tp_llama_hf_finetune_ptl.py"
MODEL_CONFIG=/fsx/ubuntu/neuronx-distributed/examples/training/llama/tp_zero1_llama_hf_pretrain/8B_config_llama3/config.json
PRETRAINED="$WORKDIR/"nxd_checkpoints/Meta-Llama-3-8B-tp32-pp1-qkvlinear-kv4
TP=32
PP=1
RUN="$WORKDIR/nxd_finetune"
export MALLOC_ARENA_MAX=64  # before torchrun, or it has no effect (defect 23)
export NEURON_CC_FLAGS="--model-type=transformer -O1 --cache_dir=$WORKDIR/cache/neuron_compile_cache"
export NEURON_FUSE_SOFTMAX=1
export NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=3
export XLA_USE_BF16=1
export NEURON_RT_NUM_CORES=32 NUM_NEURONCORES=32
export TPU_NUM_DEVICES=32 TPU_CHIPS_PER_HOST_BOUNDS=32
export NLTK_DATA=/fsx/ubuntu/nxd_lora/env_nxd_ptl/nltk_data
export PIPELINE_NXD_LORA_CONFIG="$RUN/pipeline_lora_config.json"

if [[ "${1:-}" != "--task" ]]; then
  # Once, on the batch host, before any node starts: inputs exist, the shards match TP x PP (defect 11), and the
  # launcher plus its LoRA fields are written to the shared run directory.
  for f in "$TRAINER" "$MODEL_CONFIG" "$WORKDIR/model_artifacts/"Meta-Llama-3-8B/config.json "$WORKDIR/data/nxd_train/dataset_dict.json"; do
    [[ -f "$f" ]] || { echo "error: $f does not exist" >&2; exit 2; }
  done
  SHARDS=0
  if [[ -d "$PRETRAINED/pretrained_weight/model" ]]; then
    SHARDS=$(find "$PRETRAINED/pretrained_weight/model" -maxdepth 1 -name 'dp_rank_*_tp_rank_*_pp_rank_*.pt' | wc -l)
  fi
  if (( SHARDS != TP * PP )); then
    echo "error: $PRETRAINED/pretrained_weight/model has $SHARDS shard(s), training needs TP x PP = $(( TP * PP ))" >&2
    exit 2
  fi
  rm -rf "$RUN/lora_adapter"  # a previous attempt's adapter must not pass for this one's
  mkdir -p "$RUN"
  python -m pip freeze > "$PIPELINE_RUN_DIR/pip-freeze-finetune.txt"
  # All NxD LoraConfig fields (mode adapter): the trainer hard-codes rank, alpha and
  # targets and leaves the save fields at defaults that changed between SDK releases.
  cat > "$PIPELINE_NXD_LORA_CONFIG" <<'PIPELINE_LORA_EOF'
{"bias": "none", "lora_alpha": 32, "lora_dropout": 0.05, "lora_rank": 16, "lora_save_dir": "lora_adapter", "lora_verbose": true, "merge_lora": false, "merge_sharded_lora": false, "save_lora_base": false, "save_lora_config_adapter": false, "target_modules": ["qkv_proj"]}
PIPELINE_LORA_EOF
  cat > "$RUN/launch_ptl.py" <<'PIPELINE_LAUNCH_EOF'
"""Run NxD's PTL trainer with its LoraConfig fields replaced by the rendered ones (written by pipeline)."""
import json
import os
import runpy
import sys
from pathlib import Path

import neuronx_distributed.modules.lora as nxd_lora

FIELDS = json.loads(Path(os.environ["PIPELINE_NXD_LORA_CONFIG"]).read_text())


class PipelineLoraConfig(nxd_lora.LoraConfig):
    def __init__(self, *args, **kwargs):
        # A field this NxD release does not know raises TypeError here: better than silently ignoring it.
        kwargs.update(FIELDS)
        super().__init__(*args, **kwargs)


nxd_lora.LoraConfig = PipelineLoraConfig
trainer = Path(sys.argv[1]).resolve()
sys.path[:0] = [str(trainer.parent), str(trainer.parent.parent)]  # lightning/ and the llama/ helpers
sys.argv = [str(trainer), *sys.argv[2:]]
runpy.run_path(str(trainer), run_name="__main__")
PIPELINE_LAUNCH_EOF
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
    export PIPELINE_RDZV_PORT=$(( 44000 + SLURM_JOB_ID % 1000 ))
    SRUN_FLAGS=(--ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
    # HyperPod's SPANK plugin restarts the step on a replaced node; the flag exists only there.
    if [[ -d /opt/sagemaker_cluster ]]; then SRUN_FLAGS+=(--auto-resume=1); fi
    exec srun "${SRUN_FLAGS[@]}" bash "$0" --task
  fi
  export PIPELINE_HEAD_ADDR=127.0.0.1 PIPELINE_NNODES=1 PIPELINE_RDZV_ID="local-$$" PIPELINE_RDZV_PORT=44000
  exec bash "$0" --task
fi

# One Neuron runtime root per job, on the head node's address: never localhost:48620 (defect 9).
export NEURON_RT_ROOT_COMM_ID="$PIPELINE_HEAD_ADDR:48620"
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  export FI_EFA_USE_DEVICE_RDMA=1 FI_PROVIDER=efa
fi
# The trainer saves to the relative path lora_adapter/: the working directory is set here, not inherited.
cd "$RUN"
torchrun --nnodes="$PIPELINE_NNODES" --nproc_per_node=32 --rdzv_backend=c10d --rdzv_endpoint="$PIPELINE_HEAD_ADDR:$PIPELINE_RDZV_PORT" --rdzv_id="$PIPELINE_RDZV_ID" --rdzv_conf=is_host=$(( ${SLURM_NODEID:-0} == 0 )) "$RUN/launch_ptl.py" "$TRAINER" \
  --model_path "$(dirname "$MODEL_CONFIG")" \
  --model_name "$WORKDIR/model_artifacts/"Meta-Llama-3-8B \
  --pretrained_ckpt "$PRETRAINED" \
  --data_dir "$WORKDIR/data/nxd_train" --task open_qa \
  --output_dir "$RUN/output" --log_dir "$RUN/logs" \
  --tensor_parallel_size "$TP" --seq_len 2048 \
  --batch_size 1 --grad_accum_usteps 1 \
  --max_steps 20 --steps_this_run 20 \
  --warmup_steps 5 --lr 0.0005 --seed 12349 \
  --qkv_linear 1 --kv_replicator 4 --fuse_qkv 0 \
  --use_gpu_compatible_precision 0 \
  --enable_lora --sequence_parallel_enabled --selective_checkpoint_enabled
# Inspect what was saved against the mode asked for (defect 12: a silently overridden mode shows up here).
if [[ "${SLURM_NODEID:-0}" == 0 ]]; then
  python -m stages nxd-adapter inspect --adapter-dir "$RUN/lora_adapter" --tag lora \
    --mode adapter
fi
