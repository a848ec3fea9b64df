#!/bin/bash
# benchmarks.throughput in fresh processes, alternately in a checkout of main (/work/main, nnx.BatchNorm's autodiff)
# and of the change (/work/bn, layers.BatchNorm's closed-form gradient), two rounds of each setting, with protocol 2's
# sweep paused (SIGSTOP) meanwhile. Usage: batch_norm_vjp.sh OUT
O=$1
PIDS="$(pgrep -f 'run_protocol.sh|/work/protocol/')"
kill -STOP $PIDS
trap 'kill -CONT $PIDS' EXIT
sleep 10
echo "# $(lscpu | grep 'Model name' | sed 's/  */ /g'), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ') model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' '); JAX 0.12.1; $(date -u '+%F %T') UTC; protocol 2's sweep paused" > $O
for setting in "--dtypes=float32,bfloat16_matmuls --repeats=3" \
               "--dtypes=float32 --width_multiplier=0.5 --image_size=28 --repeats=5"; do
  echo "## python -m benchmarks.throughput $setting" >> $O
  for round in 1 2; do
    for side in main bn; do
      echo "=== $side ($(git -C /work/$side rev-parse --short HEAD)$(git -C /work/$side diff --quiet || echo ' + uncommitted')) round $round $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
      (cd /work/$side && /work/venv312/bin/python -m benchmarks.throughput $setting 2>&1 | grep -v "^I12\|^{" | tail -6)
    done >> $O
  done
done
