"""The PyTorch original's best recipe: gates added to a trained baseline, then fine-tuned.

Set `--config.init_from=WORKDIR_OF_A_BASELINE_RUN`.
"""

from l0jax import config as base


def get_config():
  c = base.base_config()
  c.droprate_init = 0.05
  c.lambda_l0 = 20.0
  c.lr_milestones = (10, 60, 100, 130, 160)
  c.lr_factor = 0.5
  return c
