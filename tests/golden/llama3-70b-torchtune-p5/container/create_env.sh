#!/usr/bin/env bash
# pipeline llama3-70b-torchtune / stage create_env (torchtune:create_env)
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
# A venv with torchtune and its companions pinned (stages.md 4.1: the seed cloned torchtune main unpinned
# and its configs broke when components moved). torch is pinned to the release torchtune 0.6.1 and torchao
# 0.10.0 were built with: the base's torch is used when it is that version, else pip installs it (lm_eval
# alone would take the newest). Kept when the recorded pins match, so a rerun does not reinstall.
# The container image is the env: nothing is installed, its versions are recorded and checked.
python -m pip freeze > "$PIPELINE_RUN_DIR/torchtune-freeze.txt"
python -c "import torch, torchtune; print('torch', torch.__version__, 'torchtune', torchtune.__version__, 'cuda', torch.cuda.is_available())"
