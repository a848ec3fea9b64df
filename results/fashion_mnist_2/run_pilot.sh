#!/bin/bash
# Protocol 2's pilot (PILOT.md), validation only, into pilot/:
#   run_pilot.sh scales          # the baseline, then budget + retrain at each gate_lr_scale
#   run_pilot.sh length S        # at scale S, the pruning phase of 10 epochs
#   run_pilot.sh decided S F     # at scale S and pruning phase F, the budget run's mask trained
# Stopped, a step goes on where it stopped when started again. Each step ends by printing, for
# every run of the pilot so far, its last-epoch validation accuracy.
set -eu
cd "$(dirname "$0")/../.."
out=$PWD/results/fashion_mnist_2/pilot
base=$out/baseline_seed100

milestones() {  # epochs: 2/3 and 5/6 of them, rounded as Python rounds (20: (13,17); 5: (3,4))
  python -c 'import sys; n = int(sys.argv[1]); print(f"({round(2 * n / 3)},{round(5 * n / 6)})")' "$1"
}

. results/pilot_train.sh

pruned() {  # name scale F: prunes the baseline to 25% of the MACs in F epochs, then retrains 5
  local name=$1 scale=$2 f=$3
  train "$out/budget_$name" "$f" "$(milestones "$f")" \
      prune_to_budget.py --config.target_macs=0.25 --config.target_params=0.0 \
      --config.gate_lr_scale="$scale" --config.init_from="$base" --config.init_checkpoint=last
  python main.py --mode=analyze --checkpoint=last --workdir="$out/budget_$name" > /dev/null
  train "$out/retrain_$name" 5 "$(milestones 5)" retrain.py --config.init_from="$out/budget_$name" \
      --config.init_checkpoint=last
}

train "$base" 20 "$(milestones 20)" baseline.py
case ${1:-} in
  scales) for scale in 1 10 30; do pruned "s$scale" "$scale" 5; done ;;
  length) pruned "s$2_f10" "$2" 10 ;;
  decided)
    name=s$2$([ "$3" = 5 ] || echo "_f$3")
    train "$out/decided_$name" $(($3 + 5)) "$(milestones $(($3 + 5)))" \
        mask.py --config.mask=decided --config.mask_from="$out/budget_$name" \
        --config.target_macs=0.0 --config.init_from="$base" --config.init_checkpoint=last ;;
  *) echo "usage: run_pilot.sh scales | length S | decided S F" >&2; exit 2 ;;
esac
python - "$out" <<'PY'
import json, pathlib, sys
for workdir in sorted(pathlib.Path(sys.argv[1]).iterdir()):
  lines = (workdir / "history.jsonl").read_text().splitlines()
  last = json.loads(lines[-1])
  print(f"{workdir.name}: {len(lines)} epochs, validation accuracy {last['val_accuracy']:.4f}")
travel = sorted(pathlib.Path(sys.argv[1]).glob("budget_*/analysis/summary.md"))
for summary in travel:
  said = [l for l in summary.read_text().splitlines() if "before settling" in l]
  print(f"{summary.parent.parent.name}: {said[0] if said else 'did not settle'}")
PY
