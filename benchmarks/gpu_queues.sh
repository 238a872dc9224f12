#!/usr/bin/env bash
# On a lent multi-GPU machine: run one queue of benchmark commands per GPU, detached from the call
# (setsid), so that the work outlives one call's 10-minute limit; later calls wait and collect.
# Usage (from the repo root):
#   bash benchmarks/gpu_queues.sh start "QUEUE0" ["QUEUE1" ...]   # queue i sees only GPU i
#   bash benchmarks/gpu_queues.sh wait OUT_DIR SECONDS              # returns when all are done or after SECONDS
# A queue is a shell command line; it writes its results under $RESULTS (one folder per queue is
# wise). Each queue is pinned (taskset) to its own equal share of the CPU cores this process may use,
# so that queues do not slow each other's Python loop and loader. Runs still train slower than alone
# on a one-GPU machine (4.4-4.8 against 6.4 it/s: docs/results.md, seeds 8-11). `wait` packs $RESULTS into
# OUT_DIR/results.tar.gz (in 15 MiB parts when larger) at the end of each call (checkpoints left out;
# what is unfinished too), and prints each queue's log tail and the table of measured runs.
set -euo pipefail
state=${STATE:-/tmp/kaleido_runs/queues}
cmd=${1:?start or wait}; shift
if [[ $cmd == start ]]; then
  rm -rf "$state"; mkdir -p "$state/results"
  if ! python3 -c "import jsonargparse" 2>/dev/null; then  # once here: parallel installs would race
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  fi
  # One comma-separated core list per queue: equal contiguous slices of the cores allowed here.
  mapfile -t slices < <(python3 -c "import os, sys
cores, n = sorted(os.sched_getaffinity(0)), int(sys.argv[1])
size = len(cores) // n
for i in range(n): print(','.join(map(str, cores[i * size:(i + 1) * size] if size else cores)))" $#)
  pin=(); command -v taskset > /dev/null || echo "taskset not found: queues share all cores" >&2
  i=0
  for queue in "$@"; do
    echo "$queue" > "$state/q$i.cmd"
    command -v taskset > /dev/null && pin=(taskset -c "${slices[$i]}")
    CUDA_VISIBLE_DEVICES=$i RESULTS="$state/results" PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 \
      setsid "${pin[@]}" bash -c "$queue; echo \$? > '$state/q$i.rc'" > "$state/q$i.log" 2>&1 < /dev/null &
    echo "queue $i on GPU $i, cores ${slices[$i]}: $queue"
    i=$((i + 1))
  done
  echo "$i" > "$state/count"
  exit 0
fi
[[ $cmd == wait ]] || { echo "unknown command $cmd: use start or wait" >&2; exit 2; }
out=${1:?output dir}; seconds=${2:?seconds}
count=$(cat "$state/count")
deadline=$(( $(date +%s) + seconds ))
finished() { local n=0; for ((i = 0; i < count; i++)); do [[ -f $state/q$i.rc ]] && n=$((n + 1)); done; echo $n; }
while (( $(finished) < count && $(date +%s) < deadline )); do sleep 10; done
for ((i = 0; i < count; i++)); do
  echo "== queue $i: $(cat "$state/q$i.cmd")"
  [[ -f $state/q$i.rc ]] && echo "   exit status $(cat "$state/q$i.rc")" || echo "   still running"
  grep -v -i warn "$state/q$i.log" | tail -n 15 || true
done
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true
# The measured runs so far, one table (benchmarks/summarize_runs.py); none yet is no error here.
PYTHONPATH="/tmp/site:$PWD" python3 benchmarks/summarize_runs.py --results "$state/results" 2>/dev/null || true
# Pack what is there on every return, finished or not: a lease can end before the queues do.
cp "$state"/q*.log "$state/results/"
runs_dir=$(dirname "$state")  # curves of runs still training: their scripts copy events only at the end
(cd "$runs_dir" && find . -path ./queues -prune -o -name 'events.out.tfevents.*' -print) | while read -r f; do
  mkdir -p "$state/results/live/$(dirname "$f")" && cp "$runs_dir/$f" "$state/results/live/$f"
done
tar -czf "$out/results.tar.gz" --exclude='*.ckpt' -C "$state" results
if (( $(stat -c %s "$out/results.tar.gz") > 15 * 1024 * 1024 )); then
  split -b 15M "$out/results.tar.gz" "$out/results.tar.gz.part-" && rm "$out/results.tar.gz"
fi
ls -la "$out"
