#!/bin/bash
# The controller pilot (README.md), validation only, into this folder:
#   run.sh NAME [SETTING...]   # budget_NAME: prune_to_budget.py to 10% of the MACs in 10 epochs
#                              # with the SETTINGs, then retrain_NAME: 5 epochs, gates fixed,
#                              # with them too
# Stopped, it goes on where it stopped when started again; it ends by printing what settling
# did in every budget run here and in ../bound_pilot.
set -eu
cd "$(dirname "$0")/../.."
out=$PWD/results/controller_pilot
base=$PWD/results/fashion_mnist_2/pilot/baseline_seed100
name=$1
shift

. results/pilot_train.sh

train "$out/budget_$name" 10 "(7,8)" prune_to_budget.py --config.target_macs=0.1 \
    --config.target_params=0.0 --config.init_from="$base" --config.init_checkpoint=last "$@"
python main.py --mode=analyze --checkpoint=last --workdir="$out/budget_$name" > /dev/null
train "$out/retrain_$name" 5 "(3,4)" retrain.py --config.init_from="$out/budget_$name" \
    --config.init_checkpoint=last "$@"  # a retrain is of the same network (gate_reduce)
python results/controller_pilot/settling.py
