"""The GoogleNet without gates: the reference accuracy, and the network fine-tuning prunes.

  python main.py --config=configs/baseline.py --workdir=runs/base
"""

from l0jax import run_config


def get_config(arg: str | None = None):
  c = run_config.base_config()
  c.use_gate = False
  return run_config.variant(c, arg)
