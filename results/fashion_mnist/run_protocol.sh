#!/bin/bash
# Arms 1-5 of PROTOCOL.md (seeds 0, 1, 2), as one resumable sweep into results/fashion_mnist/runs/.
# Run it from the root of a checkout of the commit named in README.md; stopped (SIGTERM, Ctrl-C,
# the end of a session), it is started again with the same command and goes on where it stopped.
# Arm 6 (L0 from scratch) waits for its droprate pilot (PROTOCOL.md, amendment of 2026-11-25).
set -eu
cd "$(dirname "$0")/../.."
exec python -m l0jax.sweep --sweep_dir="$PWD/results/fashion_mnist/runs" \
    --scratch_lambdas= --finetune_lambdas= --target_macs=0.5,0.25 --retrain_budgets \
    --control --masks=l1_norm,random --seeds=0,1,2 \
    --config.dataset=fashion_mnist --config.width_multiplier=0.5 --config.batch_size=128 \
    --config.learning_rate=0.003 --config.lr_factor=0.1 --config.compute_dtype=float32 \
    --baseline.num_epochs=20 '--baseline.lr_milestones=(13,17)' \
    --control.num_epochs=10 '--control.lr_milestones=(7,8)' \
    --budget.num_epochs=5 '--budget.lr_milestones=(3,4)' \
    --retrain.num_epochs=5 '--retrain.lr_milestones=(3,4)' \
    --l1_norm.num_epochs=10 '--l1_norm.lr_milestones=(7,8)' \
    --random.num_epochs=10 '--random.lr_milestones=(7,8)' "$@"
