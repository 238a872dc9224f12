#!/usr/bin/env bash
# On the lent GPU machine: train configs/shapes/kaleido_text_gpu.yaml, then measure latent adherence.
# Usage (from the repo root): bash benchmarks/gpu_shapes_text.sh OUT_DIR [MAX_TIME] [all|train|eval]
# CONFIG overrides the config, SAMPLES (1024) the number of samples measured, FIT_ARGS adds fit arguments (e.g. "--model.init_args.compile true").
# With ATTENTION=1, `eval` also writes the cross-attention shares (benchmarks/attention_probe.py) to OUT_DIR/attention.json.
# `train` and `eval` split the work over two calls on a warm machine (the run lives in /tmp/kaleido_runs, kept while the machine is warm).
set -euo pipefail
out=${1:?output dir}; max_time=${2:-00:00:07:00}; stage=${3:-all}
root=${ROOT:-/tmp/kaleido_runs/shapes_text_gpu}  # outside the repo: a call that carries paths replaces them
export PYTHONUNBUFFERED=1
source benchmarks/gpu_lib.sh  # last_of, step_of, weight_sets
if ! python3 -c "import jsonargparse" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU"; } | tee "$out/device.txt"
python3 -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)" | tee -a "$out/device.txt"
if [[ $stage != eval ]]; then
  rm -rf "$root"; mkdir -p "$root"  # fresh: a warm machine keeps earlier runs
  start=$(date +%s)
  python3 -m kaleido fit --config "${CONFIG:-configs/shapes/kaleido_text_gpu.yaml}" --trainer.default_root_dir "$root" \
    --trainer.max_time "$max_time" ${FIT_ARGS:-} 2>&1 | grep -v -i warn | tail -n 40 | tee "$out/train_log.txt"
  echo "train_wall_seconds $(( $(date +%s) - start ))" | tee -a "$out/train_log.txt"
  cp "$root"/lightning_logs/version_*/events.out.tfevents.* "$out/" 2>/dev/null || true
fi
ckpt=$(last_of "$root")
step_of "$ckpt" | tee -a "$out/train_log.txt"
[[ $stage == train ]] && exit 0
# What the checkpoint loads by default (the EMA average, where the run kept one) with both samplers; an
# EMA run's trained weights, which the average lags, with DDPM as well.
settings=("ddpm 250 averaged adherence_ddpm" "ddim 50 averaged adherence_ddim")
[[ $(weight_sets "$ckpt") == *trained ]] && settings+=("ddpm 250 trained adherence_ddpm_trained")
for setting in "${settings[@]}"; do
  set -- $setting
  python3 benchmarks/shapes_adherence.py --ckpt_path "$ckpt" --num_samples "${SAMPLES:-1024}" --cfg_scale 3 --sampler $1 --num_steps $2 \
    --weights $3 --batch_size 512 --output "$out/$4" 2>&1 | grep -v -i warn | grep -v '"latent"\|"condition"\|[{}],\?$' | tail -n 20
done
# ATTENTION=1: its cross-attention shares on null / c / z (kaleido/metrics/attention.py). Off by default:
# runs K-O gave z 83-87% whether they followed 55% or 95% of their latents (docs/results.md).
if [[ ${ATTENTION:-0} == 1 ]]; then
  python3 benchmarks/attention_probe.py --ckpt_path "$ckpt" --output "$out/attention.json" 2>&1 | grep -v -i warn | tail -n 6
fi
