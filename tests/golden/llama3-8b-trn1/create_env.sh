#!/usr/bin/env bash
# pipeline llama3-8b-trn1 / stage create_env (neuron:create_env)
# Rendered by `pipeline render`; runs under pipeline's job wrapper, which sets PIPELINE_RUN_DIR,
# PIPELINE_STAGE, PIPELINE_STAGES_PATH and the run-time secrets. Slurm resources are sbatch flags of the job.
set -euo pipefail
: "${PIPELINE_RUN_DIR:?run this script through pipeline: PIPELINE_RUN_DIR is unset}"
WORKDIR=/fsx/ubuntu/peft_ft
mkdir -p "$WORKDIR"
cd "$WORKDIR"
export PYTHONPATH="${PIPELINE_STAGES_PATH:-}${PYTHONPATH:+:$PYTHONPATH}"
# Creates /fsx/ubuntu/peft_ft/env_llama3_8B_peft with the pins of optimum-neuron gen2 (stages.md 2.2). Idempotent: a venv whose
# recorded pins match is kept, so a rerun does not reinstall for twenty minutes.
VENV=/fsx/ubuntu/peft_ft/env_llama3_8B_peft
PINS='torch-neuronx==2.8.0.2.12.22436 neuronx-cc==2.23.6484.0 torchvision==0.23.0 neuronx-distributed==0.17.26814 optimum-neuron[training]==0.4.5 transformers==4.57.1 trl==0.24.0 peft==0.17.0'
if [[ -f "$VENV/.pipeline-pins" && "$(cat "$VENV/.pipeline-pins")" == "$PINS" ]]; then
  echo "env $VENV already has: $PINS"
  exit 0
fi
# First, before anything is installed: the interpreter the venv is made from, with its venv module. The venv
# links to it, so it must exist on every node that runs a stage, not only here.
if ! command -v python3.10 >/dev/null 2>&1 || ! python3.10 -c "import ensurepip, venv" >/dev/null 2>&1; then
  OS=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || uname -sr)
  echo "error: python3.10 with its venv module (ensurepip) is missing on $(hostname) ($OS);" \
       "optimum-neuron gen2 needs it" >&2
  echo "  hint: install it on every node (a HyperPod lifecycle script, or srun on all nodes):" \
       'sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update && sudo apt-get install -y python3.10 python3.10-venv python3.10-dev' >&2
  exit 2
fi
python3.10 -m venv "$VENV"
source "$VENV/bin/activate"
python -m pip install --upgrade pip
# torch-neuronx first so later packages do not pull a CUDA torch (stages.md 2.2).
python -m pip install --extra-index-url https://pip.repos.neuron.amazonaws.com torch-neuronx==2.8.0.2.12.22436 neuronx-cc==2.23.6484.0 torchvision==0.23.0 
python -m pip install --extra-index-url https://pip.repos.neuron.amazonaws.com neuronx-distributed==0.17.26814 'optimum-neuron[training]==0.4.5' transformers==4.57.1 trl==0.24.0 peft==0.17.0 
python -m pip install safetensors huggingface_hub
python -m pip freeze > "$VENV/pipeline-freeze.txt"
python -c "import optimum.neuron, torch_neuronx; print('optimum-neuron', optimum.neuron.__version__)"
echo "$PINS" > "$VENV/.pipeline-pins"
