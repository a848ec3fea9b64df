#!/bin/bash
# One 2-core process against two 1-core processes at once, protocol size, with the sweep paused.
PIDS="$(pgrep -f 'run_protocol.sh|/work/protocol/')"
kill -STOP $PIDS; trap 'kill -CONT $PIDS' EXIT; sleep 5
B="/work/venv312/bin/python -m benchmarks.throughput --dtypes=float32 --width_multiplier=0.5 --image_size=28 --repeats=5"
cd /work/main
for round in 1 2; do
  echo "=== round $round: one process, both cores $(date -u +%T)"
  $B 2>&1 | grep -v "^I12\|^{" | tail -3
  echo "=== round $round: two processes, one core each $(date -u +%T)"
  (taskset -c 0 $B 2>&1 | grep -v "^I12\|^{" | tail -2 > /tmp/t0.txt) &
  (taskset -c 1 $B 2>&1 | grep -v "^I12\|^{" | tail -2 > /tmp/t1.txt) &
  wait; cat /tmp/t0.txt /tmp/t1.txt
done
