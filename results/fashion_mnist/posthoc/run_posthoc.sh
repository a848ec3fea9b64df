#!/bin/bash
# Arm 3 with connected settling, post hoc (PROTOCOL.md, amendment of 2026-12-03). For each budget
# member named (those replay_settle.py calls DIFFERENT), e.g. budget_macs0.25_seed1: its copy
# from runs/ resumes from its last checkpoint before settling, step 1684 (the end of epoch 4 of
# 5, 421 steps each), with this checkout's settle; it is tested, then retrained and tested as
# arm 3 is. Run from a checkout at or after ae3cd52; stopped, it goes on when started again.
set -eu
cd "$(dirname "$0")/../../.."
runs=results/fashion_mnist/runs
out=results/fashion_mnist/posthoc
for member in "$@"; do
  seed=${member##*_seed}
  target=${member#budget_macs}
  target=${target%_seed*}
  recipe=(--config.dataset=fashion_mnist --config.width_multiplier=0.5 --config.batch_size=128
          --config.learning_rate=0.003 --config.lr_factor=0.1 --config.compute_dtype=float32
          --config.num_epochs=5 '--config.lr_milestones=(3,4)' --config.seed="$seed")
  budget=$out/$member
  retrain=$out/retrain_macs${target}_seed$seed
  if [ ! -e "$budget/config.json" ]; then
    mkdir -p "$budget/checkpoints"
    cp "$runs/$member/config.json" "$budget/"
    cp -a "$runs/$member/checkpoints/1684" "$budget/checkpoints/"
    head -n 4 "$runs/$member/history.jsonl" > "$budget/history.jsonl"
  fi
  if [ ! -e "$budget/test_metrics.json" ]; then
    python main.py --config=configs/prune_to_budget.py --workdir="$budget" "${recipe[@]}" \
        --config.target_macs="$target" --config.init_from="$runs/baseline_seed$seed"
    python main.py --mode=test --checkpoint=last --workdir="$budget"
  fi
  if [ ! -e "$retrain/test_metrics.json" ]; then
    python main.py --config=configs/retrain.py --workdir="$retrain" "${recipe[@]}" \
        --config.init_from="$budget"
    python main.py --mode=test --checkpoint=last --workdir="$retrain"
  fi
done
