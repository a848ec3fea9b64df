#!/bin/bash
# The post-hoc runs (PROTOCOL.md, amendments of 2026-12-03), each named as it is in posthoc/:
# - budget_macsT_seedS (those replay_settle.py calls DIFFERENT), arm 3 with connected settling:
#   its copy from runs/ resumes from its last checkpoint before settling, step 1684 (the end of
#   epoch 4 of 5, 421 steps each), with this checkout's settle; it is tested, then retrained and
#   tested as arm 3 is. Run from a checkout at or after ae3cd52.
# - l1_norm_relative_macsT_seedS, arm 4 with each filter's L1 norm relative to its layer's mean:
#   run as runs/l1_norm_macsT_seedS was (same baseline, budget, seed and recipe), the mask
#   method aside. Run from a checkout that has the method (masks.METHODS).
# Stopped, it goes on when started again.
set -eu
cd "$(dirname "$0")/../../.."
runs=results/fashion_mnist/runs
out=results/fashion_mnist/posthoc
recipe=(--config.dataset=fashion_mnist --config.width_multiplier=0.5 --config.batch_size=128
        --config.learning_rate=0.003 --config.lr_factor=0.1 --config.compute_dtype=float32)
for member in "$@"; do
  seed=${member##*_seed}
  target=${member#*_macs}
  target=${target%_seed*}
  case $member in
  budget_macs*)
    short=(--config.num_epochs=5 '--config.lr_milestones=(3,4)' --config.seed="$seed")
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
          "${short[@]}" --config.target_macs="$target" --config.init_from="$runs/baseline_seed$seed"
      python main.py --mode=test --checkpoint=last --workdir="$budget"
    fi
    if [ ! -e "$retrain/test_metrics.json" ]; then
      python main.py --config=configs/retrain.py --workdir="$retrain" "${recipe[@]}" \
          "${short[@]}" --config.init_from="$budget"
      python main.py --mode=test --checkpoint=last --workdir="$retrain"
    fi
    ;;
  l1_norm_relative_macs*)
    # The budget the protocol's L1-norm run was given: what its budget run realised.
    matched=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["target_macs"])' \
              "$runs/l1_norm_macs${target}_seed$seed/config.json")
    if [ ! -e "$out/$member/test_metrics.json" ]; then
      python main.py --config=configs/mask.py --workdir="$out/$member" "${recipe[@]}" \
          --config.num_epochs=10 '--config.lr_milestones=(7,8)' --config.seed="$seed" \
          --config.mask=l1_norm_relative --config.init_from="$runs/baseline_seed$seed" \
          --config.target_macs="$matched" --config.target_params=0.0
      python main.py --mode=test --checkpoint=last --workdir="$out/$member"
    fi
    ;;
  *)
    echo "run_posthoc.sh: $member is not a post-hoc run (budget_macsT_seedS or" \
         "l1_norm_relative_macsT_seedS)" >&2
    exit 2
    ;;
  esac
done
