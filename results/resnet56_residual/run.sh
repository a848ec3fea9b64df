#!/bin/bash
# Issue 39's capability demonstration (one seed, not evidence): a ResNet-56 on Fashion-MNIST pruned
# to 25% of its MACs with its blocks' inner channels gated (`blocks`), and with its stage widths,
# which the residual adds tie, gated too (`residual`, --config.gate_residual), from one baseline,
# with the same pruning and retraining epochs: 10 and 5, with protocol 2's pilot's gate rate
# (results/fashion_mnist_2/PILOT.md: at 5 pruning epochs the controller was late and settling chose). Resumable: run it again and it goes on.
#   results/resnet56_residual/run.sh [--config.KEY=VALUE ...]   # the settings go to every run
set -eu
cd "$(dirname "$0")/../.."
out=${OUT:-$PWD/results/resnet56_residual/runs}
recipe=(--config.dataset=fashion_mnist --config.model=resnet --config.depth=56
        --config.batch_size=128 --config.learning_rate=0.003 --config.lr_factor=0.1
        --config.compute_dtype=float32 --config.seed=0 "$@")

train() {  # workdir epochs milestones config [settings...]: trains and tests it unless it has
  local workdir=$1 epochs=$2 milestones=$3 config=$4
  shift 4
  if [ ! -f "$workdir/test_metrics.json" ]; then
    mkdir -p "$workdir"
    python main.py --config="configs/$config" --workdir="$workdir" "${recipe[@]}" \
        --config.num_epochs="$epochs" "--config.lr_milestones=$milestones" "$@" \
        >> "$workdir/console.log" 2>&1
    python main.py --mode=test --checkpoint=last --workdir="$workdir" >> "$workdir/console.log" 2>&1
  fi
}

train "$out/baseline" 10 "(7,8)" baseline.py
for gating in blocks residual; do
  residual=$([ $gating = residual ] && echo True || echo False)
  train "$out/budget_$gating" 10 "(7,8)" prune_to_budget.py --config.target_macs=0.25 \
      --config.target_params=0.0 --config.gate_lr_scale=10 --config.gate_residual="$residual" \
      --config.init_from="$out/baseline" --config.init_checkpoint=last
  [ -d "$out/budget_$gating/analysis" ] ||
    python main.py --mode=analyze --checkpoint=last --workdir="$out/budget_$gating" > /dev/null
  train "$out/retrain_$gating" 5 "(3,4)" retrain.py --config.gate_residual="$residual" \
      --config.init_from="$out/budget_$gating" --config.init_checkpoint=last
done
python - "$out" <<'PY'
import json, pathlib, sys
for run in ("baseline", "budget_blocks", "retrain_blocks", "budget_residual", "retrain_residual"):
  m = json.loads((pathlib.Path(sys.argv[1]) / run / "test_metrics.json").read_text())
  print(f"{run}: test accuracy {100 * m['test_accuracy']:.2f}%, MACs kept "
        f"{100 * m['macs_kept_fraction']:.1f}%, parameters kept {100 * m['params_kept_fraction']:.1f}%")
PY
