#!/usr/bin/env bash
# pipeline llama3-8b-nxd-tp-lora-trn1 / stage convert (nxd:convert)
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
# HF safetensors -> one full-state file -> NxD TP/PP shards (stages.md 3.1 steps 2-3), defects 10 and 11 fixed:
# --hw_backend always, --qkv_linear/--kv_size_multiplier from the same settings as the trainer's
# --qkv_linear/--kv_replicator, type=bool flags only when true, and exactly TP x PP shards or the stage fails.
NXD_EXAMPLES=/fsx/ubuntu/neuronx-distributed/examples/training/llama
CONVERTER="$NXD_EXAMPLES/convert_checkpoints.py"
MODEL_CONFIG=/fsx/ubuntu/neuronx-distributed/examples/training/llama/tp_zero1_llama_hf_pretrain/8B_config_llama3/config.json
MODEL_DIR="$WORKDIR/model_artifacts/"Meta-Llama-3-8B
FULL_STATE="$WORKDIR/nxd_checkpoints/full_state/"Meta-Llama-3-8B"/pytorch_model.bin"
OUT="$WORKDIR/"nxd_checkpoints/Meta-Llama-3-8B-tp32-pp1-qkvlinear-kv4
TP=32
PP=1
for f in "$CONVERTER" "$MODEL_CONFIG" "$MODEL_DIR/config.json"; do
  [[ -f "$f" ]] || { echo "error: $f does not exist" >&2; exit 2; }
done

# The converter's --input_dir is a *file* for torch.load holding the whole state dict (a 64GB-shard,
# safe_serialization=False save). Built from the published safetensors, written atomically, reused when complete.
if [[ ! -f "$FULL_STATE.done" ]]; then
  mkdir -p "$(dirname "$FULL_STATE")"
  MODEL_DIR="$MODEL_DIR" FULL_STATE="$FULL_STATE" python - <<'PIPELINE_FULL_STATE_EOF'
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

model_dir, target = Path(os.environ["MODEL_DIR"]), Path(os.environ["FULL_STATE"])
files = sorted(model_dir.glob("*.safetensors"))
if not files:
    raise SystemExit(f"error: no *.safetensors in {model_dir}")
state = {}
for path in files:
    part = load_file(str(path))
    clash = state.keys() & part.keys()
    if clash:
        raise SystemExit(f"error: {path.name} repeats {len(clash)} tensor(s), e.g. {sorted(clash)[0]}")
    state.update(part)
tmp = target.with_name(target.name + ".tmp")
torch.save(state, tmp)
os.replace(tmp, target)
print(f"full state: {len(state)} tensors from {len(files)} file(s) -> {target}")
PIPELINE_FULL_STATE_EOF
  touch "$FULL_STATE.done"
fi

# Stale shards from an interrupted run must never be counted.
rm -rf "$OUT/pretrained_weight"
mkdir -p "$OUT"
python "$CONVERTER" \
  --hw_backend trn1 \
  --tp_size "$TP" --pp_size "$PP" \
  --qkv_linear 1 --kv_size_multiplier 4 \
  --convert_from_full_state \
  --config "$MODEL_CONFIG" \
  --input_dir "$FULL_STATE" \
  --output_dir "$OUT/pretrained_weight"

# Exactly one shard per (TP, PP) rank, each by name: a wrong count means a mismatched conversion.
SHARDS=0
if [[ -d "$OUT/pretrained_weight/model" ]]; then
  SHARDS=$(find "$OUT/pretrained_weight/model" -maxdepth 1 -name 'dp_rank_*_tp_rank_*_pp_rank_*.pt' | wc -l)
fi
if (( SHARDS != TP * PP )); then
  echo "error: $SHARDS shard(s) in $OUT/pretrained_weight/model, expected TP x PP = $(( TP * PP ))" >&2
  exit 2
fi
for (( pp = 0; pp < PP; pp++ )); do
  for (( tp = 0; tp < TP; tp++ )); do
    shard=$(printf 'dp_rank_00_tp_rank_%02d_pp_rank_%02d.pt' "$tp" "$pp")
    [[ -s "$OUT/pretrained_weight/model/$shard" ]] || { echo "error: missing or empty $shard" >&2; exit 2; }
  done
done
echo "converted: $SHARDS shard(s) in $OUT/pretrained_weight/model"
