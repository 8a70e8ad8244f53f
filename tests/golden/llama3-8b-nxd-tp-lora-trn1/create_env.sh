#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage create_env (nxd:create_env)
# Rendered by `pipeline render`; runs under pipeline's job wrapper, which sets PIPELINE_RUN_DIR,
# PIPELINE_STAGE, PIPELINE_STAGES_PATH and the run-time secrets. Slurm resources are sbatch flags of the job.
set -euo pipefail
: "${PIPELINE_RUN_DIR:?run this script through pipeline: PIPELINE_RUN_DIR is unset}"
WORKDIR=/fsx/ubuntu/nxd_lora
mkdir -p "$WORKDIR"
cd "$WORKDIR"
export PYTHONPATH="${PIPELINE_STAGES_PATH:-}${PYTHONPATH:+:$PYTHONPATH}"
# Creates /fsx/ubuntu/nxd_lora/env_nxd_ptl with one pinned NxD + Lightning stack (stages.md 3.1; defect 20: pinned per backend, never
# git main). Idempotent: a venv whose recorded pins match is kept. Either way the installed versions are written
# into this run's directory, so every run records what it trained with.
VENV=/fsx/ubuntu/nxd_lora/env_nxd_ptl
PINS='torch-neuronx==2.8.0.2.12.22436 neuronx-cc==2.23.6484.0 neuronx-distributed==0.17.26814 transformers==4.48.0 datasets<=3.6.0 lightning==2.4.0 pytorch-lightning==2.4.0 tensorboard regex sentencepiece tenacity s3transfer awscrt peft==0.14.0 blobfile tiktoken nltk safetensors huggingface_hub<1.0'
if [[ -f "$VENV/.pipeline-pins" && "$(cat "$VENV/.pipeline-pins")" == "$PINS" ]]; then
  echo "env $VENV already has: $PINS"
else
  python3.10 -m venv "$VENV"
  source "$VENV/bin/activate"
  python -m pip install --upgrade pip
  # torch-neuronx first so later packages do not pull a CUDA torch.
  python -m pip install --extra-index-url https://pip.repos.neuron.amazonaws.com torch-neuronx==2.8.0.2.12.22436 neuronx-cc==2.23.6484.0 
  python -m pip install --extra-index-url https://pip.repos.neuron.amazonaws.com torch-neuronx==2.8.0.2.12.22436 neuronx-cc==2.23.6484.0 neuronx-distributed==0.17.26814 transformers==4.48.0 'datasets<=3.6.0' lightning==2.4.0 pytorch-lightning==2.4.0 tensorboard regex sentencepiece tenacity s3transfer awscrt peft==0.14.0 blobfile tiktoken nltk safetensors 'huggingface_hub<1.0' 
  # The PTL trainer's ROUGE evaluation needs NLTK's sentence tokenizers (stages.md 3.1).
  NLTK_DATA="$VENV/nltk_data" python -c "import os, nltk; [nltk.download(n, download_dir=os.environ['NLTK_DATA'], quiet=True, raise_on_error=True) for n in ('punkt', 'punkt_tab')]"
  # tensorboard: the trainer's NeuronTensorBoardLogger is Lightning's TensorBoardLogger, which raises without it.
  python -c "import torch_neuronx, neuronx_distributed, lightning, tensorboard, transformers; print('transformers', transformers.__version__)"
  echo "$PINS" > "$VENV/.pipeline-pins"
fi
source "$VENV/bin/activate"
# The LoRA fields finetune will pass, against the installed NxD's LoraConfig dataclass: a field this release does
# not have (enable_lora went in 2.21) fails here, not after an hour of compilation.
python -c 'import json, sys; from neuronx_distributed.modules.lora import LoraConfig; LoraConfig(**json.load(sys.stdin)); print("LoraConfig accepts the rendered fields")' <<'PIPELINE_LORA_EOF'
{"bias": "none", "lora_alpha": 32, "lora_dropout": 0.05, "lora_rank": 16, "lora_save_dir": "lora_adapter", "lora_verbose": true, "merge_lora": false, "merge_sharded_lora": false, "save_lora_base": false, "save_lora_config_adapter": false, "target_modules": ["qkv_proj"]}
PIPELINE_LORA_EOF
python -m pip freeze > "$PIPELINE_RUN_DIR/pip-freeze.txt"
echo "installed versions recorded in $PIPELINE_RUN_DIR/pip-freeze.txt"
