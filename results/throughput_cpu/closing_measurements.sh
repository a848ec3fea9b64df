#!/bin/bash
# Issue 41's closing measurements with the machine otherwise idle: protocol 2's sweep paused meanwhile.
# Expects checkouts of 1f3b791 at /work/before and of main at /work/main, /work/venv312 (requirements.txt)
# and /work/venv_bench312 (requirements.txt and torch==2.13.0), as the README says.
set -u
R=$(cd "$(dirname "$0")" && pwd)  # results/throughput_cpu
PIDS="$(pgrep -f 'run_protocol.sh|/work/protocol/')"
echo "pausing $PIDS at $(date -u +%T)"
kill -STOP $PIDS
trap 'kill -CONT $PIDS; echo "resumed at $(date -u +%T)"' EXIT
sleep 20
header() { echo "# $1"; echo "# $(lscpu | grep 'Model name' | sed 's/  */ /g'), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ') model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), $(grep -o -m1 amx_bf16 /proc/cpuinfo || echo no AMX); $(date -u '+%F %T') UTC; protocol 2's sweep paused (SIGSTOP); load $(cut -d' ' -f1-3 /proc/loadavg)"; }
# 1. Throughput before (1f3b791, issue 41's start) and after (main), fresh processes, alternately.
F=$R/issue41_before_after_xeon_idle.txt
header "results/throughput_cpu/before_after.sh with before=1f3b791 (issue 41's start) and main=$(git -C /work/main rev-parse --short HEAD): --dtypes=float32,bfloat16_matmuls --repeats=3" > $F
bash $R/before_after.sh $F --dtypes=float32,bfloat16_matmuls --repeats=3
# 2. Profiles of the gated float32 training call, before and after, named by JAX operation.
for side in before main; do
  rm -rf /tmp/prof41_$side /tmp/hlo41_$side
  (cd /work/$side && XLA_FLAGS="--xla_dump_to=/tmp/hlo41_$side --xla_dump_hlo_as_text" \
     /work/venv312/bin/python -m benchmarks.throughput --dtypes=float32 --repeats=3 \
     --profile_dir=/tmp/prof41_$side 2>&1 | grep -v '^I12' | tail -5) > /tmp/prof41_$side.txt
  P=$R/profile_${side}_xeon_idle.txt
  header "benchmarks.profile_summary (main's) --hlo_dir of benchmarks.throughput --dtypes=float32 --repeats=3 --profile_dir at $(git -C /work/$side rev-parse --short HEAD) ($side)" > $P
  cat /tmp/prof41_$side.txt >> $P
  (cd /work/main && /work/venv312/bin/python -m benchmarks.profile_summary --profile_dir=/tmp/prof41_$side \
     --hlo_dir=/tmp/hlo41_$side --rows=25 2>&1 | grep -v '^I12') >> $P
done
# 3. Beside PyTorch, one process, interleaved.
V=$R/versus_pytorch_jax012_xeon_idle.txt
header "python -m benchmarks.versus_pytorch at $(git -C /work/main rev-parse --short HEAD), /work/venv_bench312 (requirements.txt + torch==2.13.0 from PyPI)" > $V
(cd /work/main && /work/venv_bench312/bin/python -m benchmarks.versus_pytorch 2>&1 | grep -v '^I12') >> $V
