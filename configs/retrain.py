"""The network a pruning run made, retrained with its gates fixed.

  python main.py --config=configs/retrain.py --workdir=runs/rt \\
      --config.init_from=WORKDIR_OF_A_GATED_RUN

It is init_from's network, with the same channels gated (gate_reduce,
gate_residual). Its pruned channels stay pruned and its kept ones keep their
test-time scale, so the cost is the pruning run's; only the weights learn, without gate
noise and without an L0 term, to win back accuracy. init_from's last
checkpoint is read (its best can predate the gates closing).
"""

from l0jax import run_config


def get_config(arg: str | None = None):
  c = run_config.base_config()
  c.train_gates = False
  c.init_checkpoint = "last"
  c.num_epochs = 60
  c.lr_milestones = (30, 45)
  return run_config.variant(c, arg)
