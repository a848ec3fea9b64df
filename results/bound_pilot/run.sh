#!/bin/bash
# The bound pilot (README.md), validation only, into this folder: budget + retrain at each
# log_alpha_bound. Stopped, it goes on where it stopped when started again.
set -eu
cd "$(dirname "$0")/../.."
out=$PWD/results/bound_pilot
base=$PWD/results/fashion_mnist_2/pilot/baseline_seed100

. results/pilot_train.sh

for bound in 0 4.6; do
  train "$out/budget_b$bound" 10 "(7,8)" prune_to_budget.py --config.target_macs=0.1 \
      --config.target_params=0.0 --config.log_alpha_bound="$bound" --config.init_from="$base" \
      --config.init_checkpoint=last
  python main.py --mode=analyze --checkpoint=last --workdir="$out/budget_b$bound" > /dev/null
  train "$out/retrain_b$bound" 5 "(3,4)" retrain.py --config.init_from="$out/budget_b$bound" \
      --config.init_checkpoint=last
done
python - "$out" <<'PY'
import json, pathlib, sys
for workdir in sorted(pathlib.Path(sys.argv[1]).glob("*_b*")):
  history = [json.loads(l) for l in (workdir / "history.jsonl").read_text().splitlines()]
  line = f"{workdir.name}: {len(history)} epochs, validation {history[-1]['val_accuracy']:.4f}"
  if workdir.name.startswith("budget") and len(history) >= 9:
    before, after = history[7], history[8]
    line += (f"; before settling {before['train_test_time_macs_kept']:.4f} of the MACs, "
             f"validation {before['val_accuracy']:.4f} -> {after['val_accuracy']:.4f}")
  print(line)
PY
