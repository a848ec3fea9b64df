"""The GoogleNet without gates: the reference accuracy, and the network fine-tuning prunes.

  python main.py --config=configs/baseline.py --workdir=runs/base

What it gave: Fashion-MNIST at a quarter of the width, batch 64, lr 0.003,
88.34% test accuracy after 4 epochs (results/fashion_mnist_budget/); 86.84%
after the quick start's 2 epochs (results/quickstart/).
"""

from l0jax import run_config


def get_config(arg: str | None = None):
  c = run_config.base_config()
  c.use_gate = False
  return run_config.variant(c, arg)
