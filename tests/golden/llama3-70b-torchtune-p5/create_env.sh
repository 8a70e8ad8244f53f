#!/usr/bin/env bash
# pipeline llama3-70b-torchtune / stage create_env (torchtune:create_env)
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
export PYTHONPATH="${PIPELINE_STAGES_PATH:-}${PYTHONPATH:+:$PYTHONPATH}"
# A venv with torchtune and its companions pinned (stages.md 4.1: the seed cloned torchtune main unpinned
# and its configs broke when components moved). torch is pinned to the release torchtune 0.6.1 and torchao
# 0.10.0 were built with: the base's torch is used when it is that version, else pip installs it (lm_eval
# alone would take the newest). Kept when the recorded pins match, so a rerun does not reinstall.
VENV=/fsx/ubuntu/torchtune-llama3-70b/venv
PINS='torch==2.7.0 torchtune==0.6.1 torchao==0.10.0 torchdata==0.11.0 lm_eval==0.4.8 omegaconf pyyaml'
if [[ -f "$VENV/.pipeline-pins" && "$(cat "$VENV/.pipeline-pins")" == "$PINS" ]]; then
  echo "env $VENV already has: $PINS"
else
  python3 -m venv --system-site-packages "$VENV"
  source "$VENV/bin/activate"
  python -m pip install --upgrade pip
  python -m pip install torch==2.7.0 torchtune==0.6.1 torchao==0.10.0 torchdata==0.11.0 lm_eval==0.4.8 omegaconf pyyaml 
  echo "$PINS" > "$VENV/.pipeline-pins"
fi
source "$VENV/bin/activate"
# Versions recorded per run (defect 20).
python -m pip freeze > "$PIPELINE_RUN_DIR/torchtune-freeze.txt"
python -c "import torch, torchtune; print('torch', torch.__version__, 'torchtune', torchtune.__version__, 'cuda', torch.cuda.is_available())"
