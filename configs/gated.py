"""The GoogleNet with L0 gates on every branch output, trained from scratch.

  python main.py --config=configs/gated.py --workdir=runs/gated [--config.lambda_l0=0.5]

The PyTorch original's L0-from-scratch recipe (the base config's defaults).
What it gave: on Fashion-MNIST at a quarter of the width, 6 epochs, one seed,
83.83% test accuracy at 90.2% of the MACs with lambda_l0=0.5 and 72.08% at
45.9% with lambda_l0=2, against the baseline's 90.51%
(results/archive/fashion_mnist_cpu/, superseded: see its README).
"""

from l0jax import run_config


def get_config(arg: str | None = None):
  return run_config.variant(run_config.base_config(), arg)
