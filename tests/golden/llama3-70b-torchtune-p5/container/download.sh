#!/usr/bin/env bash
# pipeline llama3-70b-torchtune / stage download (torchtune:download)
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
# `tune download` reads HF_TOKEN from the environment the job wrapper resolved at run time; the token is
# never on the command line (stages.md defect 3). Safetensors as published, without the consolidated .pth.
tune download meta-llama/Meta-Llama-3-70B --output-dir "$WORKDIR/model" --ignore-patterns 'original/consolidated*'
# Complete or failed: every model-XXXXX-of-NNNNN.safetensors of the index, config.json and the tokenizer.
python -m stages tune-config --check-model "$WORKDIR/model"
