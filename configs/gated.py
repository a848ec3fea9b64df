"""GoogleNet with L0 gates on every branch output, trained from scratch."""

from l0jax import config as base


def get_config():
  return base.base_config()
