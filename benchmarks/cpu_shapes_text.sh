#!/usr/bin/env bash
# On the 2-core CPU machine: time `fit` of configs/shapes/kaleido_text.yaml, then measure adherence.
# Usage (from the repo root): bash benchmarks/cpu_shapes_text.sh OUT_DIR [NUM_SAMPLES]
set -euo pipefail
out=${1:?output dir}; samples=${2:-60}
mkdir -p "$out"
root="$out/run"
start=$(date +%s)
python -m kaleido fit --config configs/shapes/kaleido_text.yaml --trainer.default_root_dir "$root" \
  --trainer.enable_progress_bar false > "$out/train_log.txt" 2>&1
echo "train_wall_seconds $(( $(date +%s) - start ))" | tee -a "$out/train_log.txt"
ckpt=$(ls "$root"/lightning_logs/version_*/checkpoints/last.ckpt | tail -n 1)
python -c "import torch,sys; c=torch.load(sys.argv[1], weights_only=True); print('global_step', c['global_step'])" "$ckpt" | tee -a "$out/train_log.txt"
for sampler in "ddpm 250" "ddim 50"; do
  set -- $sampler
  python benchmarks/shapes_adherence.py --ckpt_path "$ckpt" --num_samples "$samples" --cfg_scale 3 --sampler "$1" \
    --num_steps "$2" --batch_size "$samples" --output "$out/adherence_$1" 2>&1 | grep '"adherence\|unparsed\|seconds'
done
