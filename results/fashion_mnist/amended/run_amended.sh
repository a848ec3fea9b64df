#!/bin/bash
# The re-runs of PROTOCOL.md's amendment of 2026-12-06: seed 0's control, budget runs and their
# retraining, each started from baseline_seed0's last checkpoint, otherwise as run_protocol.sh
# runs them. A resumable sweep into amended/, over a copy of the finished baseline_seed0 (whose
# checkpoints are the protocol's, byte for byte); stopped, it goes on when started again.
set -eu
cd "$(dirname "$0")/../../.."
out=$PWD/results/fashion_mnist/amended
[ -e "$out/baseline_seed0/test_metrics.json" ] || cp -a results/fashion_mnist/runs/baseline_seed0 "$out/"
exec python -m l0jax.sweep --sweep_dir="$out" \
    --scratch_lambdas= --finetune_lambdas= --target_macs=0.5,0.25 --retrain_budgets \
    --control --masks= --seeds=0 \
    --config.dataset=fashion_mnist --config.width_multiplier=0.5 --config.batch_size=128 \
    --config.learning_rate=0.003 --config.lr_factor=0.1 --config.compute_dtype=float32 \
    --baseline.num_epochs=20 '--baseline.lr_milestones=(13,17)' \
    --control.num_epochs=10 '--control.lr_milestones=(7,8)' --control.init_checkpoint=last \
    --budget.num_epochs=5 '--budget.lr_milestones=(3,4)' --budget.init_checkpoint=last \
    --retrain.num_epochs=5 '--retrain.lr_milestones=(3,4)' "$@"
