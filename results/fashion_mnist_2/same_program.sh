#!/bin/bash
# Whether the checkout this runs from trains as f511257 did: budget_macs0.1_seed0's command
# (its sweep.log's first line) with the recipe's values added since f511257 set as registered
# (`registered`), into a scratch workdir, stopped after its first epoch, whose history record is
# compared with the committed one.
#   results/fashion_mnist_2/same_program.sh > results/fashion_mnist_2/same_program.txt
set -eu
cd "$(dirname "$0")/../.."
here=$PWD/results/fashion_mnist_2
run=$here/runs/budget_macs0.1_seed0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=$(head -1 "$run/sweep.log" | sed -e 's/^\$ [^ ]* [^ ]*main.py //' \
    -e "s|--config=[^ ]*/configs/|--config=configs/|" -e "s|--workdir=[^ ]*|--workdir=$work/run|" \
    -e "s|init_from=[^ ]*/runs/|init_from=$here/runs/|")
registered="--config.log_alpha_bound=0 --config.gate_reduce=False"
eval "set -- $args $registered"
echo "at $(git rev-parse --short HEAD): python main.py $*"
python main.py "$@" > "$work/console.log" 2>&1 &
pid=$!
until [ -s "$work/run/history.jsonl" ] || ! kill -0 $pid 2> /dev/null; do sleep 5; done
kill -TERM $pid 2> /dev/null || true
wait $pid || true
python - "$run/history.jsonl" "$work/run/history.jsonl" <<'PY'
import json, sys
import numpy as np
then, now = (json.loads(open(path).readline()) for path in sys.argv[1:])
differ = []
for key in sorted((set(then) | set(now)) - {"epoch_seconds"}):
  a, b = then.get(key), now.get(key)
  if key == "log_alpha":
    a, b = (np.concatenate([np.asarray(v, np.float64) for v in x.values()]) for x in (a, b))
    if not np.array_equal(a, b):
      differ.append(f"{key}: largest difference {np.abs(a - b).max():.3g}")
  elif a != b:
    differ.append(f"{key}: {a} then, {b} now")
print("first epoch identical to the committed record" if not differ else
      "first epoch differs from the committed record:\n  " + "\n  ".join(differ))
PY
