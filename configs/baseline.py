"""GoogleNet without gates: the reference accuracy."""

from l0jax import config as base


def get_config():
  c = base.base_config()
  c.use_gate = False
  return c
