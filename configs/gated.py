"""The GoogleNet with L0 gates on every branch output, trained from scratch.

  python main.py --config=configs/gated.py --workdir=runs/gated [--config.lambda_l0=0.5]

The PyTorch original's L0-from-scratch recipe (the base config's defaults),
kept as the original's so that its sweep is reproduced. To a budget from
scratch, configs/prune_from_scratch.py starts the gates more open, as protocol
1's pilot found better (its docstring has the figures).
"""

from l0jax import run_config


def get_config(arg: str | None = None):
  return run_config.variant(run_config.base_config(), arg)
