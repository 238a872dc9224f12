# Shared by the GPU plans (benchmarks/gpu_all.sh, gpu_followup.sh): source it after setting
# runs (run folders), results (what comes back) and inception (the TF-FID weights file).
# EVAL_ARGS adds evaluate arguments (later ones win: a dry run with --num_samples 8 --steps 2, say).

wait_for() { until [[ -e $1 ]]; do sleep 5; done; }
last_of() { ls "$1"/lightning_logs/version_*/checkpoints/last.ckpt | tail -n 1; }
step_of() { python3 -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=True, map_location='cpu')['global_step'])" "$1"; }

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
