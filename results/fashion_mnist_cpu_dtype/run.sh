#!/bin/bash
# float32 against bfloat16 compute on a short real-data run (issue 5): the
# same 2-epoch Fashion-MNIST baseline recipe in each dtype, for seeds 0 and 1 (SEEDS and
# DTYPES choose fewer). Run from the repository root; workdirs go to runs/dtype_check/.
set -e
for seed in ${SEEDS:-0 1}; do
  for dtype in ${DTYPES:-float32 bfloat16 bfloat16_matmuls}; do
    workdir=runs/dtype_check/seed$seed/$dtype
    python main.py --config=configs/baseline.py --workdir=$workdir \
      --config.dataset=fashion_mnist --config.width_multiplier=0.25 --config.batch_size=64 \
      --config.learning_rate=0.003 --config.num_epochs=2 --config.lr_milestones='(1,)' \
      --config.compute_dtype=$dtype --config.seed=$seed
    python main.py --mode=test --workdir=$workdir
  done
done
