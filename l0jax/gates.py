"""Hard-concrete L0 gates (Louizos, Welling & Kingma 2018), one per output channel.

The math is the paper's, with its constants (temperature 2/3, stretched to
(-0.1, 1.1)): a clipped binary-concrete variable whose test-time value is
exactly 0 for pruned channels, and whose probability of being non-zero is the
differentiable L0 norm we penalise.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

BETA = 2.0 / 3.0  # temperature
GAMMA, ZETA = -0.1, 1.1  # stretch interval
EPS = 1e-6
# The test-time gate is 0 (the channel is pruned) iff log_alpha <= PRUNE_AT, and
# 1 (the channel passes unscaled) iff log_alpha >= OPEN_AT; in between it is
# undecided: kept, but scaled by a gate strictly between 0 and 1.
PRUNE_AT = math.log(-GAMMA / ZETA)  # -log 11
OPEN_AT = math.log((1 - GAMMA) / (ZETA - 1))  # +log 11


def _stretch_and_clip(s: jax.Array) -> jax.Array:
  return jnp.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def sample_gate(key: jax.Array, log_alpha: jax.Array, batch_size: int) -> jax.Array:
  """A training-time gate per example and channel: [batch_size, channels]."""
  u = jax.random.uniform(key, (batch_size, log_alpha.shape[-1]), jnp.float32, EPS, 1.0 - EPS)
  s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / BETA)
  return _stretch_and_clip(s)


def test_gate(log_alpha: jax.Array) -> jax.Array:
  """The deterministic gate used at test time; a channel is pruned iff this is 0."""
  return _stretch_and_clip(jax.nn.sigmoid(log_alpha))


def prob_open(log_alpha: jax.Array) -> jax.Array:
  """P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)): the expected L0 of each gate."""
  return jax.nn.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def initial_log_alpha(droprate_init: float) -> float:
  """log(1 - p) - log(p): the log_alpha gates start around, for the drop rate p."""
  return math.log(1.0 - droprate_init) - math.log(droprate_init)


def init_log_alpha(droprate_init: float) -> Callable[..., jax.Array]:
  """Initializer: N(initial_log_alpha(p), 0.01), so that gates start closed with probability ~p."""
  mean = initial_log_alpha(droprate_init)

  def init(key, shape, dtype=jnp.float32):
    return mean + 0.01 * jax.random.normal(key, shape, dtype)

  return init


def gate_values(log_alpha: jax.Array, key: jax.Array | None, batch_size: int) -> jax.Array:
  """The gates of one call: with a `key` (training) drawn per example, [batch_size, channels];
  without one the test-time gates, [1, channels]."""
  return test_gate(log_alpha)[None] if key is None else sample_gate(key, log_alpha, batch_size)


def scale_channels(x: jax.Array, z: jax.Array) -> jax.Array:
  """`x` (channels last) times the gates `z` ([batch or 1, channels]), cast back to x's dtype."""
  return x * z.reshape(z.shape[0], *(1,) * (x.ndim - 2), -1).astype(x.dtype)


def gate_channels(x: jax.Array, log_alpha: jax.Array, key: jax.Array | None = None) -> jax.Array:
  """Multiplies each channel of an NHWC activation by its gate.

  With a `key` (training) every example draws its own gates from that key;
  without one the test-time gates are used. Gates are float32 whatever the
  activation's dtype; the product is cast back.
  """
  return scale_channels(x, gate_values(log_alpha, key, x.shape[0]))


class LogAlpha(nnx.Param):
  """The log_alpha of a gated layer's output channels: how every part of l0jax finds a gate.

  A `Param` (it trains, and checkpoints written when gates were plain Params
  restore into it), but never weight-decayed (`optimizer.create_optimizer`).
  """


def gate_paths(state: nnx.State) -> frozenset[tuple]:
  """The key paths of the `LogAlpha` arrays of an `nnx.State`, as `jax.tree_util` gives them.

  For code that walks a state's arrays rather than a module (the optimizer,
  checkpoint loading): there too a gate is a `LogAlpha`, whatever its name or place.
  """
  return frozenset(path for path, _ in
                   jax.tree_util.tree_flatten_with_path(nnx.filter_state(state, LogAlpha))[0])


class L0Gate(nnx.Module):
  """The log_alpha of one gated layer's output channels (`gate_channels` applies them)."""

  def __init__(self, num_channels: int, droprate_init: float, *, rngs: nnx.Rngs):
    self.log_alpha = LogAlpha(init_log_alpha(droprate_init)(rngs.params(), (num_channels,)))
