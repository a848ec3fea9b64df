"""The hard-concrete gate against Louizos et al. (2018), in closed form and by Monte-Carlo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from l0jax import gates

LOG_ALPHAS = np.array([-6.0, -2.0, -0.5, 0.0, 0.7, 2.0, 6.0], np.float32)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_constants_are_the_papers():
  assert (gates.BETA, gates.GAMMA, gates.ZETA, gates.EPS) == (2 / 3, -0.1, 1.1, 1e-6)


def test_test_gate_formula():
  expected = np.clip(sigmoid(LOG_ALPHAS.astype(np.float64)) * 1.2 - 0.1, 0, 1)
  np.testing.assert_allclose(gates.test_gate(jnp.asarray(LOG_ALPHAS)), expected, atol=1e-6)
  # Pruned exactly when sigmoid(log_alpha) <= 1/12, i.e. log_alpha <= -log(11).
  assert gates.test_gate(jnp.float32(-math.log(11) - 1e-3)) == 0
  assert gates.test_gate(jnp.float32(-math.log(11) + 1e-3)) > 0


def test_prob_open_is_one_minus_stretched_cdf_at_zero():
  # CDF of the stretched variable at 0: P(s < -gamma / (zeta - gamma)), with
  # P(s < t) = sigmoid(beta * logit(t) - log_alpha) for the binary concrete s.
  t = 0.1 / 1.2
  cdf0 = sigmoid((2 / 3) * math.log(t / (1 - t)) - LOG_ALPHAS.astype(np.float64))
  np.testing.assert_allclose(gates.prob_open(jnp.asarray(LOG_ALPHAS)), 1 - cdf0, atol=1e-6)
  np.testing.assert_allclose(gates.prob_open(jnp.asarray(LOG_ALPHAS)),
                             sigmoid(LOG_ALPHAS + (2 / 3) * math.log(11)), atol=1e-6)


def test_sample_matches_spec_formula():
  key = jax.random.key(3)
  log_alpha = jnp.asarray(LOG_ALPHAS)
  z = gates.sample_gate(key, log_alpha, 5)
  u = np.asarray(jax.random.uniform(key, (5, len(LOG_ALPHAS)), jnp.float32, 1e-6, 1 - 1e-6),
                 np.float64)
  s = sigmoid((np.log(u) - np.log(1 - u) + LOG_ALPHAS) / (2 / 3))
  np.testing.assert_allclose(z, np.clip(s * 1.2 - 0.1, 0, 1), atol=1e-5)


def test_monte_carlo_probability_and_mean():
  n = 200_000
  z = np.asarray(gates.sample_gate(jax.random.key(0), jnp.asarray(LOG_ALPHAS), n))
  assert z.min() >= 0 and z.max() <= 1
  # Standard error of a frequency over 2e5 draws is below 1.2e-3.
  np.testing.assert_allclose((z > 0).mean(0), gates.prob_open(jnp.asarray(LOG_ALPHAS)), atol=6e-3)
  # Exact zeros and ones both occur with positive probability (the "hard" in hard concrete).
  assert ((z == 0).mean(0)[LOG_ALPHAS == 0] > 0.05).all()
  assert ((z == 1).mean(0)[LOG_ALPHAS == 0] > 0.05).all()


def test_samples_differ_per_example_and_repeat_per_key():
  la = jnp.zeros(16)
  a = gates.sample_gate(jax.random.key(1), la, 4)
  np.testing.assert_array_equal(a, gates.sample_gate(jax.random.key(1), la, 4))
  assert not np.array_equal(a[0], a[1])
  assert not np.array_equal(a, gates.sample_gate(jax.random.key(2), la, 4))


def test_init_distribution():
  for p in (0.5, 0.05, 0.3):
    la = np.asarray(gates.init_log_alpha(p)(jax.random.key(0), (20_000,)))
    assert abs(la.mean() - math.log((1 - p) / p)) < 1e-3
    assert abs(la.std() - 0.01) < 5e-4


def test_gradients_reach_log_alpha():
  la = jnp.asarray(LOG_ALPHAS)
  sampled = jax.grad(lambda a: gates.sample_gate(jax.random.key(0), a, 64).sum())(la)
  penalty = jax.grad(lambda a: gates.prob_open(a).mean())(la)
  assert np.all(penalty > 0)
  assert np.count_nonzero(sampled) >= 5


def test_gate_channels():
  log_alpha = jnp.array([-10.0, 10.0, 0.0])
  x = jnp.ones((2, 4, 4, 3), jnp.bfloat16)
  y = gates.gate_channels(x, log_alpha)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y[0, 0, 0], np.float32),
                             [0, 1, float(gates.test_gate(jnp.float32(0)))], atol=1e-2)
  trained = gates.gate_channels(x.astype(jnp.float32), log_alpha, jax.random.key(0))
  assert trained.shape == x.shape and not np.array_equal(trained[0], trained[1])


def test_a_gate_is_found_by_its_type_whatever_its_name():
  class Net(nnx.Module):
    def __init__(self):
      self.log_alpha_like = nnx.Param(jnp.zeros(2))  # a name is not a gate
      self.block = nnx.List([gates.LogAlpha(jnp.ones(3))])

  state = nnx.state(Net(), nnx.Param)
  found = gates.gate_paths(state)
  leaves = dict(jax.tree_util.tree_flatten_with_path(state)[0])
  assert [leaves[p].shape for p in found] == [(3,)]
