#!/bin/bash
# benchmarks.throughput in fresh processes, alternately in a checkout of the commit before (/work/before) and of main
# (/work/main), two rounds; appends to the file named first. Usage: before_after.sh OUT [benchmark flags]
O=$1; shift
for round in 1 2; do
  for side in before main; do
    echo "=== $side ($(git -C /work/$side rev-parse --short HEAD)) round $round $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd /work/$side && /work/venv312/bin/python -m benchmarks.throughput "$@" 2>&1 | grep -v "^I1206\|^{" | tail -6)
  done
done >> $O
