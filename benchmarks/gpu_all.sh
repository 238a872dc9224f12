#!/usr/bin/env bash
# Every GPU measurement of issues 2-4 in one lease of a 4-GPU machine: four queues, one per GPU, run by
# benchmarks/gpu_queues.sh. From the repo root (a copy of it: the queues outlive the call):
#   bash benchmarks/gpu_queues.sh start "bash benchmarks/gpu_all.sh 0" "bash benchmarks/gpu_all.sh 1" \
#     "bash benchmarks/gpu_all.sh 2" "bash benchmarks/gpu_all.sh 3"
#   bash benchmarks/gpu_queues.sh wait OUT 570     # in this and the following calls
#   0: text (shipped recipe, compiled) 9:30 → adherence → evaluate it at CFG 1, 2, 4, 8 → the baseline at 4, 8
#   1: VQ tokenizer 3:00 → combined (text | box | visual token) 9:30 → adherence → evaluate it
#   2: baseline 8:00 (every 100th step kept) → blob 7:00 → adherence → the baseline at 1, 2
#   3: text with a cooldown of the last 20% 9:30 → adherence → visual token 7:00 → adherence
# Every Kaleido and baseline run is compiled with padded batches (benchmarks/compile_check.py: the
# same loss and samples as eager for the text, combined, blob and baseline configs).
# The baseline is evaluated at the text run's step (same denoiser, batch and steps). Evaluation needs the
# TF-FID Inception weights at $INCEPTION (default /tmp/inception/default_1.pt); it waits for the file.
# `python -m kaleido report --inputs [...]` joins the evaluate outputs afterwards (docs/results.md).
set -euo pipefail
queue=${1:?queue 0-3}
runs=${RUNS:-/tmp/kaleido_runs}
results=${RESULTS:?set by gpu_queues.sh}
inception=${INCEPTION:-/tmp/inception/default_1.pt}
fast="--model.init_args.compile true --data.init_args.pad_to_limits true"
vq=$runs/vq/lightning_logs/version_0/checkpoints/last.ckpt
export PYTHONUNBUFFERED=1

source benchmarks/gpu_lib.sh

baseline_at_text_step() {  # the kept baseline checkpoint at the text run's last step (or the nearest below)
  wait_for "$results/text_a.done"
  local step; step=$(cat "$results/text_a/step")
  local kept; kept=$(ls "$runs"/baseline/keep/step=*.ckpt | sed 's/.*step=\([0-9]*\).ckpt/\1/' | sort -n \
    | awk -v s="$step" '$1 <= s' | tail -n 1)
  echo "$runs/baseline/keep/step=$kept.ckpt"
}

case $queue in
  0)
    trap 'touch "$results/text_a.done"' EXIT  # the baseline's evaluations wait for it, also after a failure
    ROOT=$runs/text_a FIT_ARGS="$fast --data.init_args.num_workers 6" \
      bash benchmarks/gpu_shapes_text.sh "$results/text_a" 00:00:09:30 all
    step_of "$(last_of "$runs/text_a")" | cut -d ' ' -f 2 > "$results/text_a/step"
    touch "$results/text_a.done"
    evaluate kaleido-text "$(last_of "$runs/text_a")" "[1,2,4,8]"
    evaluate baseline "$(baseline_at_text_step)" "[4,8]" --data_config "$runs/baseline/lightning_logs/version_0/config.yaml"
    ;;
  1)
    trap 'touch "$results/vq.done"' EXIT  # queue 3 waits for it, also after a failure
    train_vq 00:00:03:00
    touch "$results/vq.done"
    TYPES=combined VQ_CKPT=$vq WORKERS=6 ROOT=$runs/types FIT_ARGS="$fast" \
      bash benchmarks/gpu_shapes_types.sh "$results/types" 00:00:09:30 all
    evaluate kaleido-combined "$(last_of "$runs/types/combined")" "[1,2,4,8]"
    ;;
  2)
    mkdir -p "$results/baseline"
    python3 -m kaleido fit --config configs/shapes/baseline_gpu.yaml --trainer.default_root_dir "$runs/baseline" \
      --trainer.max_time 00:00:08:00 $fast --data.init_args.num_workers 6 \
      --trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint --trainer.callbacks.every_n_train_steps 100 \
      --trainer.callbacks.save_top_k -1 --trainer.callbacks.dirpath "$runs/baseline/keep" \
      --trainer.callbacks.filename "{step}" 2>&1 | grep -v -i warn | tail -n 30 > "$results/baseline/train_log.txt"
    cp "$runs"/baseline/lightning_logs/version_0/events.* "$results/baseline/"
    TYPES=blob WORKERS=6 ROOT=$runs/types FIT_ARGS="$fast" bash benchmarks/gpu_shapes_types.sh "$results/types" 00:00:07:00 all
    ckpt=$(baseline_at_text_step)
    echo "$ckpt" > "$results/baseline/evaluated_checkpoint.txt"
    evaluate baseline "$ckpt" "[1,2]" --data_config "$runs/baseline/lightning_logs/version_0/config.yaml"
    ;;
  3)
    ROOT=$runs/text_b FIT_ARGS="$fast --data.init_args.num_workers 6 --trainer.callbacks+=kaleido.callbacks.Cooldown --trainer.callbacks.fraction 0.2" \
      bash benchmarks/gpu_shapes_text.sh "$results/text_b" 00:00:09:30 all
    wait_for "$results/vq.done"
    TYPES=vtoken VQ_CKPT=$vq WORKERS=6 ROOT=$runs/types FIT_ARGS="$fast" bash benchmarks/gpu_shapes_types.sh "$results/types" 00:00:07:00 all
    ;;
  *) echo "queue must be 0-3, got $queue" >&2; exit 2 ;;
esac
