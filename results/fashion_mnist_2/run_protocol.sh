#!/bin/bash
# Protocol 2 (PROTOCOL.md), one resumable sweep into results/fashion_mnist_2/runs/, from the root
# of a checkout of the commit README.md names:
#   run_protocol.sh baselines         # seeds 3 and 4's baselines (seeds 0-2's are protocol 1's, copied)
#   run_protocol.sh budget B S F      # every arm at B of the MACs, seeds 0-4; the pilot's S and F
#   run_protocol.sh equal B S F       # if F = 10: arms 2-4 for R epochs, into equal_retraining/
#   run_protocol.sh bounded B S F     # arms 1b and 4b (the amendment): this checkout's recipes,
#                                     # into bounded/
# Stopped (SIGTERM, Ctrl-C, the end of a session), a step goes on where it stopped when started
# again with the same command.
set -eu
cd "$(dirname "$0")/../.."
here=$PWD/results/fashion_mnist_2
runs=$here/runs
r=5

milestones() {  # epochs: 2/3 and 5/6 of them, rounded as Python rounds (20: (13,17); 10: (7,8))
  python -c 'import sys; n = int(sys.argv[1]); print(f"({round(2 * n / 3)},{round(5 * n / 6)})")' "$1"
}

sweep() {  # sweep_dir [flags...]: the protocol's recipe and baselines, and the flags given
  local dir=$1
  shift
  python -m l0jax.sweep --sweep_dir="$dir" --scratch_lambdas= --finetune_lambdas= \
      --config.dataset=fashion_mnist --config.width_multiplier=0.5 --config.batch_size=128 \
      --config.learning_rate=0.003 --config.lr_factor=0.1 --config.compute_dtype=float32 \
      --baseline.num_epochs=20 "--baseline.lr_milestones=$(milestones 20)" "$@"
}

masks() {  # epochs: each of arms 2-4 trained for them
  local m
  for m in decided random_widths random l1_norm_relative; do
    echo "--$m.num_epochs=$1" "--$m.lr_milestones=$(milestones "$1")"
  done
}

copy_baselines() {  # protocol 1's baselines of seeds 0-2, with their checkpoints, into dir
  local seed
  for seed in 0 1 2; do
    [ -d "$1/baseline_seed$seed" ] || cp -r "$here/../fashion_mnist/runs/baseline_seed$seed" "$1/"
  done
}

case ${1:-} in
  baselines)
    mkdir -p "$runs"
    copy_baselines "$runs"
    sweep "$runs" --seeds=3,4 ;;
  budget)
    b=$2 s=$3 f=$4
    mkdir -p "$runs"
    copy_baselines "$runs"
    # shellcheck disable=SC2046
    sweep "$runs" --seeds=0,1,2,3,4 --target_macs="$b" --retrain_budgets --control \
        --masks=decided,random_widths,random,l1_norm_relative \
        --budget.num_epochs="$f" "--budget.lr_milestones=$(milestones "$f")" \
        --budget.gate_lr_scale="$s" \
        --retrain.num_epochs=$r "--retrain.lr_milestones=$(milestones $r)" \
        --control.num_epochs=$((f + r)) "--control.lr_milestones=$(milestones $((f + r)))" \
        $(masks $((f + r))) ;;
  equal)
    # The baselines and budget runs are the main sweep's (linked), so only arms 2-4 train here.
    b=$2 s=$3 f=$4
    [ "$f" = 10 ] || { echo "the equal-retraining view is for F = 10 only" >&2; exit 2; }
    dir=$here/equal_retraining
    mkdir -p "$dir"
    for seed in 0 1 2 3 4; do
      for run in baseline_seed$seed budget_macs${b}_seed$seed; do
        [ -e "$dir/$run" ] || ln -s "../runs/$run" "$dir/$run"
      done
    done
    # shellcheck disable=SC2046
    sweep "$dir" --seeds=0,1,2,3,4 --target_macs="$b" \
        --masks=decided,random_widths,random,l1_norm_relative \
        --budget.num_epochs="$f" "--budget.lr_milestones=$(milestones "$f")" \
        --budget.gate_lr_scale="$s" $(masks $r) ;;
  bounded)
    # Arm 1b: configs/prune_to_budget.py and configs/retrain.py as this checkout has them, with
    # arm 1's flags; arms 4b: configs/mask.py's, at the MACs arm 1b realised, with arm 4's. From
    # the main sweep's baselines (linked), so only arms 1b and 4b train here: a seed only once
    # its baseline has finished there (run it again later for the others).
    b=$2 s=$3 f=$4
    dir=$here/bounded
    mkdir -p "$dir"
    seeds=
    for seed in 0 1 2 3 4; do
      [ -e "$runs/baseline_seed$seed/test_metrics.json" ] || continue
      seeds=$seeds${seeds:+,}$seed
      [ -e "$dir/baseline_seed$seed" ] || ln -s "../runs/baseline_seed$seed" "$dir/baseline_seed$seed"
    done
    echo "bounded $b: seeds $seeds (those whose baseline has finished)" >&2
    # shellcheck disable=SC2046
    sweep "$dir" --seeds="$seeds" --target_macs="$b" --retrain_budgets \
        --masks=random,l1_norm_relative \
        --budget.num_epochs="$f" "--budget.lr_milestones=$(milestones "$f")" \
        --budget.gate_lr_scale="$s" \
        --retrain.num_epochs=$r "--retrain.lr_milestones=$(milestones $r)" \
        $(masks $((f + r))) ;;
  *)
    echo "usage: run_protocol.sh baselines | budget B S F | equal B S F | bounded B S F" >&2
    exit 2 ;;
esac
