"""A trained network pruned once by a simple rule, then trained with that mask fixed.

  python main.py --config=configs/mask.py --workdir=runs/l1_half \\
      --config.init_from=WORKDIR_OF_A_BASELINE_RUN \\
      [--config.mask=random] [--config.target_macs=0.25]

The methods L0 pruning is compared with (l0jax/masks.py): `l1_norm` keeps the
channels whose filters have the largest L1 norms (Li et al., ICLR 2017),
`l1_norm_relative` the largest relative to their layer's mean norm, `random`
channels in a random order, each while they fit the budget; then the
weights train as in configs/retrain.py, the mask fixed. Give it the budget an
L0 run realised (its test_metrics.json's macs_kept_fraction) to compare the
two at the same cost. Or `--config.mask=decided` (or `random_widths`) with
`--config.mask_from=WORKDIR_OF_A_GATED_RUN --config.target_macs=0`: the
channels that run's gates kept (or as many in each gated layer, at random),
on the channels it gated.

A GoogleNet's 1x1 reduce layers are gated (`gate_reduce`), as in
configs/prune_to_budget.py, so that a mask at an L0 run's cost chooses among
the same channels.
"""

from configs import retrain
from l0jax import run_config


def get_config(arg: str | None = None):
  c = retrain.get_config()
  c.mask = "l1_norm"
  c.target_macs = 0.5
  c.gate_reduce = True
  return run_config.variant(c, arg)
