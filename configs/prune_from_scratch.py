"""Train a gated network from scratch to a budget in one run: by default, to half of its MACs.

  python main.py --config=configs/prune_from_scratch.py --workdir=runs/scratch_half \\
      [--config.target_macs=0.25]

For when there is no trained network to prune (configs/prune_to_budget.py
prunes one): configs/gated.py's network and training, with the L0 term the
Lagrangian that brings the test-time cost to the target (l0jax/budgets.py),
and the gates starting more open than the original's (droprate_init 0.2, not
0.5): in protocol 1's pilot (results/fashion_mnist/README.md; width 0.5,
Fashion-MNIST, half of the MACs, 30 epochs, one seed, validation only) 0.2
validated at 93.12% against 0.5's 91.92%. With it, protocol 1's arm 6 (three
seeds, 30 epochs) reached the test accuracy of a 20-epoch baseline pruned to
the same MACs and retrained for 10 (92.20% against 92.18%), 1.39 pp below the
baseline trained on for those 10 epochs unpruned.

The sweep's from-scratch budget runs (`--scratch_budgets`) use this recipe.
"""

from configs import gated
from l0jax import run_config


def get_config(arg: str | None = None):
  c = gated.get_config()
  c.target_macs = 0.5
  c.droprate_init = 0.2
  return run_config.variant(c, arg)
