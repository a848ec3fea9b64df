"""The UvA GoogleNet's size and shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l0jax import googlenet, layers
from test_export import randomize


def abstract(*args, **kwargs) -> googlenet.GoogleNet:
  """A network of shapes only: building the real one eagerly is slow on a CPU."""
  return nnx.eval_shape(lambda: googlenet.GoogleNet(*args, **kwargs, rngs=nnx.Rngs(0)))


def num_params(net):
  return sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))


def output_shape(net, x, **kwargs):
  graphdef, state = nnx.split(net)
  return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, **kwargs), state, x)


def test_full_width_has_the_spec_parameter_count():
  net = abstract(10, 3, use_gate=False)
  assert num_params(net) == 260_650


def test_gates_sit_on_every_branch_output():
  net = abstract(10, 3, use_gate=True)
  log_alphas = net.channel_graph(32).log_alphas(net)
  assert len(log_alphas) == 32
  assert sum(v.size for v in log_alphas.values()) == 832  # 64 + 4 x 96 + 3 x 128 channels
  assert num_params(net) == 260_650 + 832
  assert log_alphas["block6/pool"].shape == (24,)


def test_width_multiplier_scales_channels():
  arch = googlenet.Architecture.at_width(0.25)
  assert arch.stem == 16 and arch.blocks[0] == googlenet.Inception(8, 4, 4, 8, 2, 2)
  assert arch.block_inputs()[1] == 16 and arch.head_inputs == 32


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 28, 28, 1)])
def test_forward_shapes(shape):
  net = abstract(7, shape[-1], width_multiplier=0.25)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  assert output_shape(net, x, train=False).shape == (2, 7)
  assert output_shape(net, x, train=True, gate_key=jax.random.key(0)).shape == (2, 7)


def test_training_without_a_key_uses_the_test_time_gates():
  """As with fixed gates (train_gates=False): closed gates zero their channels, no noise drawn."""
  closed = lambda path, shape, rng: np.full(shape, -10.0)
  net = randomize(abstract(10, 3, width_multiplier=0.25), closed)
  logits = nnx.jit(lambda net, x: net(x, train=True))(net, jnp.ones((2, 8, 8, 3)))
  np.testing.assert_allclose(logits, np.broadcast_to(net.head.bias[...], logits.shape), atol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  net = abstract(10, 3, width_multiplier=0.25, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(net))} == {jnp.dtype(jnp.float32)}
  assert output_shape(net, jnp.ones((1, 8, 8, 3)), train=False).dtype == jnp.float32


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_matches_reduce_window(stride):
  x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
  reference = lambda x: nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(layers.max_pool_3x3(x, stride), reference(x))
  weights = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)
  np.testing.assert_allclose(grad(lambda x: layers.max_pool_3x3(x, stride)), grad(reference),
                             atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_sends_each_outputs_gradient_to_one_maximum_of_its_window_under_ties(stride):
  x = jnp.round(jax.random.normal(jax.random.key(0), (1, 7, 9, 2)))  # most windows tie
  y, vjp = jax.vjp(lambda x: layers.max_pool_3x3(x, stride), x)
  one_hots = jnp.eye(y.size).reshape(-1, *y.shape)
  (grads,) = jax.vmap(vjp)(one_hots)
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  for one_hot, grad in zip(one_hots, np.asarray(grads)):
    _, i, j, c = np.argwhere(one_hot)[0]
    (where,) = np.argwhere(grad)
    assert grad[tuple(where)] == 1 and np.count_nonzero(grad) == 1
    window = padded[0, stride * i:stride * i + 3, stride * j:stride * j + 3, c]
    assert where[3] == c and where[1] - stride * i in (-1, 0, 1) and where[2] - stride * j in (-1, 0, 1)
    assert x[tuple(where)] == window.max() == y[0, i, j, c]


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("bfloat16_matmuls", [False, True])
def test_conv_functions_match_lax_conv(kernel_size, bfloat16_matmuls):
  """Values and gradients of each convolution path against `lax.conv_general_dilated`.

  In bfloat16 they must also equal, up to the order of the float32 sums, the
  float32 convolutions of the inputs and the cotangent rounded to bfloat16.
  """
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (2, 6, 5, 8))
  kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, 8, 4))
  cotangent = jax.random.normal(keys[2], (2, 6, 5, 4))
  reference = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  conv = lambda x, k: layers.conv_function(kernel_size, bfloat16_matmuls)(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def value_and_grads(f, x, k):
    y, vjp = jax.vjp(f, x, k)
    return (y, *vjp(cotangent))

  got = value_and_grads(conv, x, kernel)
  assert all(a.dtype == jnp.float32 for a in got)
  for g, want in zip(got, value_and_grads(reference, x, kernel)):
    tolerance = 0.02 if bfloat16_matmuls else 1e-5  # bfloat16 keeps 8 bits of the mantissa.
    np.testing.assert_allclose(g, want, atol=tolerance * np.abs(want).max())
  if bfloat16_matmuls:
    rounded = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
    y, vjp = jax.vjp(reference, rounded(x), rounded(kernel))
    want = (y, *vjp(rounded(cotangent)))
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
