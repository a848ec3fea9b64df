#!/bin/bash
# Arm 6's droprate pilot (PROTOCOL.md, amendment of 2026-11-25): L0 from scratch to 50% of the
# MACs for B + M = 30 epochs at seed 100 (not a protocol seed), droprate_init 0.2 then 0.5, with
# every other setting as the sweep gives arm 6's members (run_protocol.sh's, milestones at 2/3
# and 5/6 of 30 epochs). Validation only: nothing here runs --mode=test. Run it from a checkout
# of the commit named in ../README.md (this file copied there); stopped, it is started again
# with the same command and each run goes on where it stopped. It ends by printing what the
# choice reads: each run's last-epoch validation accuracy and the MACs its test-time gates keep.
set -eu
pilot="$(cd "$(dirname "$0")" && pwd)"
cd "$pilot/../../.."
for droprate in 0.2 0.5; do
  workdir="$pilot/scratch_macs0.5_droprate${droprate}_seed100"
  # A finished run's checkpoints are not in git: the commit's main.py would train it afresh.
  if [ -f "$workdir/history.jsonl" ] && [ "$(wc -l < "$workdir/history.jsonl")" -ge 30 ]; then
    continue
  fi
  mkdir -p "$workdir"
  python main.py --config=configs/gated.py --workdir="$workdir" \
      --config.dataset=fashion_mnist --config.width_multiplier=0.5 --config.batch_size=128 \
      --config.learning_rate=0.003 --config.lr_factor=0.1 --config.compute_dtype=float32 \
      --config.num_epochs=30 '--config.lr_milestones=(20,25)' \
      --config.target_macs=0.5 --config.target_params=0.0 \
      --config.droprate_init="$droprate" --config.seed=100 >> "$workdir/console.log" 2>&1
done
python - "$pilot" <<'PY'
import json, pathlib, sys
for workdir in sorted(pathlib.Path(sys.argv[1]).glob("scratch_macs0.5_droprate*_seed100")):
  last = json.loads((workdir / "history.jsonl").read_text().splitlines()[-1])
  print(f"{workdir.name}: epochs {last['epoch'] + 1}, validation accuracy "
        f"{100 * last['val_accuracy']:.2f}%, test-time MACs kept "
        f"{100 * last['train_test_time_macs_kept']:.2f}%")
PY
