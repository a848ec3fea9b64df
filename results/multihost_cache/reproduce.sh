#!/bin/bash
# Two processes (--multihost, one CPU device each) train 1 epoch of a tiny gated ResNet-8, then
# resume it for a 2nd: bash reproduce.sh WORKDIR [main.py flags]. Each process is stopped after
# 150 s. Run at bc092a0 (JAX 0.12.1), before main.py left the cache out of multi-process runs.
set -u
cd "$(dirname "$0")/../.."
workdir=$1; shift
for epochs in 1 2; do
  port=$((20000 + RANDOM % 20000))
  for i in 0 1; do
    JAX_PLATFORMS=cpu timeout 150 python main.py --config=configs/gated.py \
        --config.dataset=synthetic --config.synthetic_image_size=8 \
        --config.synthetic_num_train=512 --config.width_multiplier=0.25 --config.batch_size=32 \
        --config.eval_batch_size=64 --config.steps_per_call=1 --config.log_every_steps=1 \
        --config.num_epochs=$epochs '--config.lr_milestones=(1,)' --config.model=resnet \
        --config.depth=8 --workdir="$workdir" --multihost \
        --coordinator_address=localhost:$port --num_processes=2 --process_id=$i "$@" \
        > "$workdir.epochs$epochs.p$i.log" 2>&1 &
  done
  wait
  echo "num_epochs=$epochs: $(tail -n 1 "$workdir.epochs$epochs.p0.log" | cut -c1-160)"
done
