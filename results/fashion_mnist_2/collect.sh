#!/bin/bash
# Copies protocol 2's runs from the sweep's worktree into this checkout, to be committed:
#   results/fashion_mnist_2/collect.sh [PROTOCOL_WORKTREE [RECIPE_WORKTREE]]
# (default /work/protocol and /work/recipe, README.md's "To go on"): runs/, bounded/ and
# equal_retraining/ run by run from the first, where they are (a link, as bounded/'s baselines,
# stays a link), and each sweep's console log from the worktree that ran it. Of the checkpoints
# it keeps what a later run or a resumed one needs: a finished baseline or budget run its last
# (what the arms start from), any other finished run none, a run in progress all of its own.
# Lock files are not copied.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
from=${1:-/work/protocol}/results/fashion_mnist_2
recipe=${2:-/work/recipe}/results/fashion_mnist_2
for folder in runs bounded equal_retraining; do
  [ -d "$from/$folder" ] || continue
  mkdir -p "$here/$folder"
  for run in "$from/$folder"/*; do
    [ -d "$run" ] || continue  # the sweep's own lock, results.md, ...
    name=$(basename "$run")
    rm -rf "${here:?}/$folder/$name"
    cp -a "$run" "$here/$folder/$name"
    copy=$here/$folder/$name
    [ -L "$copy" ] && continue
    rm -f "$copy/lock"
    [ -f "$copy/test_metrics.json" ] && [ -d "$copy/checkpoints" ] || continue
    case $name in
      baseline_*|budget_*)
        last=$(ls "$copy/checkpoints" | sort -n | tail -n 1)
        find "$copy/checkpoints" -mindepth 1 -maxdepth 1 ! -name "$last" -exec rm -rf {} + ;;
      *) rm -rf "$copy/checkpoints" ;;
    esac
  done
done
cp -a "$from/protocol_console.log" "$here/"
if [ -f "$recipe/bounded_console.log" ]; then cp -a "$recipe/bounded_console.log" "$here/"; fi
