#!/usr/bin/env bash
# What session 5's lease left open, in one lease of a 4-GPU machine (two GPUs: queues 0 and 2 only):
#   issue 2: is the text GPU config, now with `unet.qk_norm: true` and checkpoints that keep the last
#            steps, reliable? Five more seeds (3-7), each measured with the EMA and the trained weights;
#   issue 3: blob on the 100 grid, 9 minutes; visual tokens with their chance and ceiling references.
# From a copy of the repo root (the queues outlive the call):
#   bash benchmarks/gpu_queues.sh start "bash benchmarks/gpu_followup.sh 0" ... "bash benchmarks/gpu_followup.sh 3"
#   bash benchmarks/gpu_queues.sh wait OUT 570     # in this and the following calls
#   0: text seed 3 → text seed 4
#   1: text seed 5 → text seed 6
#   2: blob (grid 100) 9:00 → text seed 7
#   3: VQ 3:00 → visual token 6:00
# No evaluation sweep here: the Inception weights need not travel.
set -euo pipefail
queue=${1:?queue 0-3}
runs=${RUNS:-/tmp/kaleido_runs}
results=${RESULTS:?set by gpu_queues.sh}
export PYTHONUNBUFFERED=1
source benchmarks/gpu_lib.sh

text_seed() {  # SEED: the shipped GPU config as a user runs it (eager, 9 minutes), then adherence and attention
  ROOT=$runs/text_s$1 FIT_ARGS="--seed_everything $1 --data.init_args.num_workers 6" \
    bash benchmarks/gpu_shapes_text.sh "$results/text_s$1" 00:00:09:00 all
}

case $queue in
  0) text_seed 3 && text_seed 4 ;;
  1) text_seed 5 && text_seed 6 ;;
  2)
    TYPES=blob WORKERS=6 ROOT=$runs/types FIT_ARGS="--data.init_args.latents.init_args.grid 100" \
      bash benchmarks/gpu_shapes_types.sh "$results/types" 00:00:09:00 all
    text_seed 7
    ;;
  3)
    train_vq 00:00:03:00
    TYPES=vtoken VQ_CKPT=$runs/vq/lightning_logs/version_0/checkpoints/last.ckpt WORKERS=6 ROOT=$runs/types \
      bash benchmarks/gpu_shapes_types.sh "$results/types_vtoken" 00:00:06:00 all
    ;;
  *) echo "queue must be 0-3, got $queue" >&2; exit 2 ;;
esac
