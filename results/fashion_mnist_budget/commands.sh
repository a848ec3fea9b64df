#!/bin/bash
# The budget runs, as the sweep plans them (python -m l0jax.sweep ... --target_macs=0.5,0.25
# prints the same command lines), started by hand so that the two run side by side.
set -u
cd "$(dirname "$0")/../.."
D=$PWD/runs/fashion_mnist_budget
COMMON="--config.dataset=fashion_mnist --config.width_multiplier=0.25 --config.batch_size=64 --config.learning_rate=0.003"
run() {  # name target
  local W=$D/budget_macs$1
  mkdir -p "$W"
  { nice -n 10 python main.py --config=configs/prune_to_budget.py --workdir="$W" $COMMON \
      --config.num_epochs=3 '--config.lr_milestones=(2,)' --config.target_macs=$1 \
      --config.target_params=0.0 --config.init_from="$D/baseline" &&
    nice -n 10 python main.py --mode=test --checkpoint=last --workdir="$W"; } >> "$W/sweep.log" 2>&1
}
run 0.5 &
run 0.25 &
wait
