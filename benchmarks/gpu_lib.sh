# Shared by the GPU scripts (gpu_all.sh, gpu_followup.sh, gpu_shapes_text.sh, gpu_shapes_types.sh). `evaluate`
# and `train_vq` need runs (run folders), results (what comes back) and inception (the TF-FID weights file).
# EVAL_ARGS adds evaluate arguments (later ones win: a dry run with --num_samples 8 --steps 2, say).

wait_for() { until [[ -e $1 ]]; do sleep 5; done; }
last_of() {  # the last checkpoint of a run folder, or a clear failure
  local found; found=$(ls "$1"/lightning_logs/version_*/checkpoints/last.ckpt 2>/dev/null | tail -n 1)
  [[ -n $found ]] || { echo "no last.ckpt under $1" >&2; return 1; }
  echo "$found"
}
step_of() {  # "global_step N epoch M" of a checkpoint
  python3 -c "import torch,sys; c=torch.load(sys.argv[1], weights_only=True, map_location='cpu'); print('global_step', c['global_step'], 'epoch', c['epoch'])" "$1"
}

weight_sets() {  # "averaged trained" for a checkpoint that keeps an EMA average beside the trained weights, else "averaged" (= trained)
  python3 -c "import sys; from kaleido.checkpoint import holds_average, read_checkpoint
print('averaged trained' if holds_average(read_checkpoint(sys.argv[1])) else 'averaged')" "$1"
}

evaluate() {  # NAME CKPT SCALES [more evaluate arguments]: the issue-4 sweep setting, 5,000 samples, DDPM 250
  local name=$1 ckpt=$2 scales=$3; shift 3
  local out=$results/eval/${name}_cfg${scales//[^0-9]/}
  wait_for "$inception"
  mkdir -p "$out"
  python3 -m kaleido evaluate --ckpt_path "$ckpt" --name "$name" --cfg_scales "$scales" --num_samples 5000 \
    --sampler ddpm --steps 250 --precision bf16 --compile true --batch_size 1250 --num_workers 8 \
    --feature_weights "$inception" --reference_cache "$runs/reference" --output "$out" "$@" ${EVAL_ARGS:-} 2>&1 \
    | grep -v -i warn | tr '\r' '\n' | grep -v "evaluate: *[0-9]" | tail -n 20 > "$out/log.txt"
}

train_vq() {  # MAX_TIME: configs/shapes/vq.yaml into $runs/vq, its log and events into $results/vq
  mkdir -p "$results/vq"
  python3 -m kaleido fit --config configs/shapes/vq.yaml --trainer.default_root_dir "$runs/vq" \
    --trainer.max_time "$1" --data.init_args.num_workers 6 2>&1 | grep -v -i warn | tail -n 30 \
    > "$results/vq/train_log.txt"
  cp "$runs"/vq/lightning_logs/version_0/events.* "$results/vq/"
  step_of "$runs/vq/lightning_logs/version_0/checkpoints/last.ckpt" >> "$results/vq/train_log.txt"
}
