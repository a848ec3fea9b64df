"""The optimizer: AdamW on a multi-step schedule, the gates at a rate of their own."""

import ml_collections
import optax

from l0jax import pruning


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  return optax.piecewise_constant_schedule(
      config.learning_rate,
      {int(m) * steps_per_epoch: config.lr_factor for m in config.lr_milestones})


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """AdamW on `schedule` (`learning_rate_schedule`); the gates' log_alpha are not weight-decayed,
  and learn at `gate_lr_scale` times the weights' rate (Adam's step is proportional to it)."""
  not_a_gate = lambda params: pruning.map_with_gates(lambda gate, _: not gate, params)
  tx = optax.adamw(schedule,
                   weight_decay=config.weight_decay, mask=not_a_gate)
  if config.gate_lr_scale == 1:
    return tx  # the optimizer state of version 1 checkpoints (l0jax/versions.py), and its program
  is_gate = lambda params: pruning.map_with_gates(lambda gate, _: gate, params)
  return optax.chain(tx, optax.masked(optax.scale(config.gate_lr_scale), is_gate))
