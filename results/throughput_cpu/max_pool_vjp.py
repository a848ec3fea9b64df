"""Issue 41's max-pool idea, measured: a custom VJP for `layers.max_pool_3x3` that routes each
output's gradient to the first shift equal to it (the tie rule of the autodiff it replaces),
against JAX's autodiff of the shifted maxima, on the pool shapes of the full-width GoogleNet at
batch 128 (and the protocol's 28x28 width-0.5 stem pool). Checks values and gradients first,
then CPU milliseconds of a jitted gradient (forward included), the median of 20 calls, two
interleaved rounds.

  PYTHONPATH=. python results/throughput_cpu/max_pool_vjp.py
"""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from l0jax import layers


def _shifts(x, axis, stride):
  size = (x.shape[axis] - 1) // stride + 1
  pad = [(0, 0)] * x.ndim; pad[axis] = (1, 1)
  x = jnp.pad(x, pad, constant_values=-jnp.inf)
  return [jax.lax.slice_in_dim(x, i, i + stride * (size - 1) + 1, stride, axis) for i in range(3)]


def _max(x, axis, stride):
  return functools.reduce(lambda a, b: jnp.where(a >= b, a, b), _shifts(x, axis, stride))


def _grad(x, y, g, axis, stride):
  n, size = x.shape[axis], y.shape[axis]
  taken, grad = None, None
  for i, s in enumerate(_shifts(x, axis, stride)):
    first = (s == y) if taken is None else ((s == y) & ~taken) if i < 2 else ~taken
    taken = first if taken is None else taken | first
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (i, n + 2 - i - (stride * (size - 1) + 1), stride - 1)
    part = jax.lax.pad(jnp.where(first, g, jnp.zeros((), g.dtype)), jnp.zeros((), g.dtype), config)
    grad = part if grad is None else grad + part
  return jax.lax.slice_in_dim(grad, 1, n + 1, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def pool(x, stride):
  return _max(_max(x, 1, stride), 2, stride)


def pool_fwd(x, stride):
  rows = _max(x, 1, stride)
  y = _max(rows, 2, stride)
  return y, (x, rows, y)


def pool_bwd(stride, res, g):
  x, rows, y = res
  return (_grad(x, rows, _grad(rows, y, g, 2, stride), 1, stride),)


pool.defvjp(pool_fwd, pool_bwd)


for stride in (1, 2):
  for shape in [(2, 7, 9, 3), (1, 8, 8, 2)]:
    for k in range(3):
      x = jax.random.normal(jax.random.key(k), shape)
      if k == 2: x = jnp.round(x)
      w = jax.random.normal(jax.random.key(9), layers.max_pool_3x3(x, stride).shape)
      a = jax.grad(lambda x: jnp.sum(layers.max_pool_3x3(x, stride) * w))(x)
      b = jax.grad(lambda x: jnp.sum(pool(x, stride) * w))(x)
      assert np.array_equal(np.asarray(layers.max_pool_3x3(x, stride)), np.asarray(pool(x, stride)))
      np.testing.assert_allclose(a, b, atol=1e-6, err_msg=str((stride, shape, k)))
print("same values and gradients")


def timeit(f, *a, n=20):
  f(*a).block_until_ready()
  ts = []
  for _ in range(n):
    t = time.process_time(); f(*a).block_until_ready(); ts.append(time.process_time() - t)
  return np.median(ts) * 1e3


SHAPES = [((128, 32, 32, 192), 1), ((128, 32, 32, 256), 1), ((128, 32, 32, 480), 2),
          ((128, 16, 16, 480), 1), ((128, 16, 16, 832), 2), ((128, 8, 8, 832), 1),
          ((128, 28, 28, 96), 1)]
for shape, stride in SHAPES:
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), layers.max_pool_3x3(x, stride).shape)
  old = jax.jit(jax.grad(lambda x: jnp.sum(layers.max_pool_3x3(x, stride) * w)))
  new = jax.jit(jax.grad(lambda x: jnp.sum(pool(x, stride) * w)))
  r = [(timeit(old, x), timeit(new, x)) for _ in range(2)]
  print(shape, stride, "autodiff ms", [round(a) for a, _ in r], "custom ms", [round(b) for _, b in r])
