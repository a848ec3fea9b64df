# Sourced by the scripts of protocol 2's pilots, from the repository root: the recipe every
# run of theirs shares (PROTOCOL.md's, at seed 100) and how they train. Pilots read
# validation only: nothing is tested.

recipe=(--config.dataset=fashion_mnist --config.width_multiplier=0.5 --config.batch_size=128
        --config.learning_rate=0.003 --config.lr_factor=0.1 --config.compute_dtype=float32
        --config.seed=100)

train() {  # workdir epochs milestones config [settings...]: trains it unless it has all epochs
  local workdir=$1 epochs=$2 milestones=$3 config=$4
  shift 4
  if [ -f "$workdir/history.jsonl" ] && [ "$(wc -l < "$workdir/history.jsonl")" -ge "$epochs" ]; then
    return
  fi
  mkdir -p "$workdir"
  python main.py --config="configs/$config" --workdir="$workdir" "${recipe[@]}" \
      --config.num_epochs="$epochs" "--config.lr_milestones=$milestones" "$@" \
      >> "$workdir/console.log" 2>&1
}
