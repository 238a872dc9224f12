#!/usr/bin/env bash
# On the lent GPU machine: Kaleido on shapes with the box, blob, visual-token and combined latents
# (configs/shapes/kaleido_<type>_gpu.yaml), then each type's adherence (benchmarks/shapes_adherence.py:
# 1,024 samples, DDPM 250, CFG 3). vtoken and combined first need the VQ tokenizer (configs/shapes/vq.yaml).
# Usage (from the repo root):
#   TYPES="box blob" bash benchmarks/gpu_shapes_types.sh OUT_DIR [MAX_TIME] [all|train|eval]
# TYPES      any of box blob vtoken combined (default: all four). They train at the same time on the
#            one GPU, each with 14/n loader workers (WORKERS sets it); MAX_TIME is each one's.
# VQ_TIME    the VQ tokenizer's training time (default 00:00:02:00). It is trained only when a type
#            needs it and /tmp/kaleido_runs/shapes_types_gpu/vq holds none (delete that folder to retrain it);
#            VQ_CKPT names another checkpoint instead.
# NUM_TRAIN  training scenes of every type trained in this call (default: the configs' 50,000).
# `train` and `eval` split the work over calls on a warm machine (the runs live in /tmp/kaleido_runs/shapes_types_gpu: outside the repo, which a call with carried paths replaces).
# A dry run on a CPU: SUFFIX="" (the CPU configs), FIT_ARGS / VQ_ARGS (more fit arguments), SAMPLES, STEPS.
set -euo pipefail
out=${1:?output dir}; max_time=${2:-00:00:06:30}; stage=${3:-all}
types=(${TYPES:-box blob vtoken combined})
root=$(realpath -m "${ROOT:-/tmp/kaleido_runs/shapes_types_gpu}")  # absolute: the Kaleido checkpoints keep the VQ path
suffix=${SUFFIX-_gpu}; samples=${SAMPLES:-1024}; steps=${STEPS:-250}
workers=${WORKERS:-$(( 14 / ${#types[@]} > 1 ? 14 / ${#types[@]} : 1 ))}
vq=$(realpath -m "${VQ_CKPT:-$root/vq/lightning_logs/version_0/checkpoints/last.ckpt}")
for type in "${types[@]}"; do
  [[ -f configs/shapes/kaleido_${type}${suffix}.yaml ]] || { echo "no configs/shapes/kaleido_${type}${suffix}.yaml" >&2; exit 2; }
done
needs_vq() { [[ $1 == vtoken || $1 == combined ]]; }
export PYTHONUNBUFFERED=1
if ! python3 -c "import jsonargparse" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
mkdir -p "$out" "$root"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU"; } | tee "$out/device.txt"
python3 -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)" | tee -a "$out/device.txt"
echo "types ${types[*]}; max_time $max_time; loader workers each $workers" | tee -a "$out/device.txt"

source benchmarks/gpu_lib.sh  # last_of, step_of, weight_sets

if [[ $stage != eval ]]; then
  for type in "${types[@]}"; do
    if needs_vq "$type" && [[ ! -f $vq ]]; then
      [[ -n ${VQ_CKPT:-} ]] && { echo "VQ_CKPT=$VQ_CKPT does not exist" >&2; exit 2; }
      rm -rf "$root/vq"; mkdir -p "$out/vq"
      start=$(date +%s)
      python3 -m kaleido fit --config configs/shapes/vq.yaml --trainer.default_root_dir "$root/vq" \
        --trainer.max_time "${VQ_TIME:-00:00:02:00}" ${VQ_ARGS:-} 2>&1 | grep -v -i warn | tail -n 20 > "$out/vq/train_log.txt"
      echo "train_wall_seconds $(( $(date +%s) - start ))" >> "$out/vq/train_log.txt"
      step_of "$vq" >> "$out/vq/train_log.txt"
      cp "$root"/vq/lightning_logs/version_*/events.out.tfevents.* "$out/vq/" 2>/dev/null || true
      tail -n 3 "$out/vq/train_log.txt"
    fi
  done
  [[ -f $vq ]] && echo "VQ checkpoint: $vq"
  pids=()
  for type in "${types[@]}"; do
    rm -rf "${root:?}/$type"; mkdir -p "$root/$type" "$out/$type"  # fresh: a warm machine keeps earlier runs
    args=(--config "configs/shapes/kaleido_${type}${suffix}.yaml" --trainer.default_root_dir "$root/$type"
          --trainer.max_time "$max_time" --data.init_args.num_workers "$workers")
    needs_vq "$type" && args+=(--data.init_args.latents.init_args.checkpoint "$vq")
    [[ -n ${NUM_TRAIN:-} ]] && args+=(--data.init_args.num_train "$NUM_TRAIN")
    (
      start=$(date +%s)
      status=0
      python3 -m kaleido fit "${args[@]}" ${FIT_ARGS:-} > "$root/$type/fit.log" 2>&1 || status=$?
      { grep -v -i warn "$root/$type/fit.log" | tail -n 40 || true
        echo "train_wall_seconds $(( $(date +%s) - start ))"; } > "$out/$type/train_log.txt"
      exit $status
    ) &
    pids+=($!)
  done
  failed=()
  for i in "${!types[@]}"; do
    type=${types[$i]}
    if wait "${pids[$i]}"; then
      step_of "$(last_of "$root/$type")" >> "$out/$type/train_log.txt"
      cp "$root/$type"/lightning_logs/version_*/events.out.tfevents.* "$out/$type/" 2>/dev/null || true
    else
      failed+=("$type")
    fi
    echo "== $type"; tail -n 2 "$out/$type/train_log.txt"
  done
  (( ${#failed[@]} == 0 )) || { echo "fit failed for: ${failed[*]} (see $out/<type>/train_log.txt)" >&2; exit 1; }
fi
[[ $stage == train ]] && exit 0

for type in "${types[@]}"; do
  ckpt=$(last_of "$root/$type")
  mkdir -p "$out/$type"
  { echo "$ckpt"; step_of "$ckpt"; } > "$out/$type/checkpoint.txt"
  : > "$out/$type/adherence_log.txt"
  for weights in $(weight_sets "$ckpt"); do  # an EMA average lags the trained weights in short runs: measure both
    dir=adherence_ddpm; [[ $weights == trained ]] && dir+=_trained
    python3 benchmarks/shapes_adherence.py --ckpt_path "$ckpt" --num_samples "$samples" --cfg_scale 3 --sampler ddpm \
      --num_steps "$steps" --batch_size 512 --weights "$weights" --output "$out/$type/$dir" >> "$out/$type/adherence_log.txt" 2>&1 \
      || { tail -n 20 "$out/$type/adherence_log.txt" >&2; exit 1; }
  done
done
python3 - "$out" "${types[@]}" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in sys.argv[2:]:
    words = (out / name / "checkpoint.txt").read_text().split()
    step = words[words.index("global_step") + 1]
    for folder in ("adherence_ddpm", "adherence_ddpm_trained"):
        if not (out / name / folder).is_dir():  # a run without EMA: one weight set
            continue
        result = json.loads((out / name / folder / "adherence.json").read_text())
        scores = "; ".join(
            f"{kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in score.items() if k != "count")
            for kind, score in result["per_type"].items()
        )
        print(f"{name} (step {step}, {result['weights']} weights, {result['num_samples']} samples, {result['sampling_seconds']} s): {scores}")
EOF
