"""The network a pruning run made, retrained with its gates fixed.

Its pruned channels stay pruned and its kept ones keep their test-time
scale, so the cost is the pruning run's; only the weights learn, without gate
noise, to win back accuracy. Set `--config.init_from=WORKDIR_OF_A_GATED_RUN`;
its last checkpoint is read (its best can predate the gates closing).
"""

from l0jax import config as base


def get_config():
  c = base.base_config()
  c.train_gates = False
  c.init_checkpoint = "last"
  c.num_epochs = 60
  c.lr_milestones = (30, 45)
  return c
