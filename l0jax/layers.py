"""The layers the networks share: a conv + BatchNorm + ReLU, its convolution products, the max-pool.

Each is written for the speed XLA:CPU gives it (`conv_function`,
`max_pool_3x3`); the numbers are those of Flax's and JAX's own.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from l0jax import convolutions


def scale_channels(channels: int, width_multiplier: float) -> int:
  return max(1, round(channels * width_multiplier))


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """Max-pool 3x3 with padding 1 on NHWC, as a max over rows and then over columns.

  The same values and gradients as `nnx.max_pool` (a tie too sends the whole
  gradient to one input), but the gradient is elementwise selects that XLA
  fuses, where `reduce_window`'s gradient is a select-and-scatter, which XLA:CPU
  runs as a slow loop.
  """
  def max_of_shifts(x: jax.Array, axis: int) -> jax.Array:
    size = (x.shape[axis] - 1) // stride + 1
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    x = jnp.pad(x, pad, constant_values=-jnp.inf)
    shifts = (jax.lax.slice_in_dim(x, i, i + stride * (size - 1) + 1, stride, axis)
              for i in range(3))
    return functools.reduce(lambda a, b: jnp.where(a >= b, a, b), shifts)

  return max_of_shifts(max_of_shifts(x, 1), 2)


def pointwise_conv(inputs: jax.Array, kernel: jax.Array, *args, precision=None,
                   **kwargs) -> jax.Array:
  """`lax.conv_general_dilated` for a 1x1, stride-1 NHWC convolution, as a matmul over channels.

  The same numbers, but XLA:CPU runs the matmul and its weight gradient
  faster than the convolution, which transposes whole activations for it.
  """
  del args, kwargs  # strides, padding, dilations and layout: the trivial ones of a 1x1 conv.
  return jnp.dot(inputs, kernel[0, 0], precision=precision)


def _float32_sum(a: jax.Array, b: jax.Array, a_axes, b_axes) -> jax.Array:
  """`dot_general` of bfloat16 operands over `a_axes` x `b_axes`, accumulated in float32."""
  return jax.lax.dot_general(a, b, ((tuple(a_axes), tuple(b_axes)), ((), ())),
                             preferred_element_type=jnp.float32)


@jax.custom_vjp
def bfloat16_dot(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x[..., K] @ w[K, N]` for float32 arrays, multiplied in bfloat16, accumulated in float32.

  Its gradients are such dots too, of the cotangent rounded to bfloat16 (as
  PyTorch's autocast does): JAX's own gradient of a dot with
  `preferred_element_type` would multiply the float32 cotangent by a bfloat16
  operand, which XLA:CPU runs as a float32 dot.
  """
  return _float32_sum(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (x.ndim - 1,), (0,))


def _bfloat16_dot_fwd(x, w):
  return bfloat16_dot(x, w), (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))


def _bfloat16_dot_bwd(residuals, g):
  x, w = residuals
  g = g.astype(jnp.bfloat16)
  lead = range(x.ndim - 1)
  return _float32_sum(g, w, (g.ndim - 1,), (1,)), _float32_sum(x, g, lead, lead)


bfloat16_dot.defvjp(_bfloat16_dot_fwd, _bfloat16_dot_bwd)


def _bfloat16_pointwise_conv(inputs: jax.Array, kernel: jax.Array, *args, **kwargs) -> jax.Array:
  del args, kwargs  # As in `pointwise_conv`.
  return bfloat16_dot(inputs, kernel[0, 0])


def conv_function(kernel_size: int, bfloat16_matmuls: bool,
                  stride: int = 1) -> Callable[..., jax.Array]:
  """What `nnx.Conv` calls for one convolution (odd kernel, padded to keep the size; NHWC).

  A strided one is XLA's own, in float32: the faster paths here are written
  for stride 1, and a network has few strided convolutions (the ResNet two).
  """
  if stride != 1:
    return jax.lax.conv_general_dilated
  if kernel_size > 1:
    return convolutions.same_conv(bfloat16_matmuls)
  return _bfloat16_pointwise_conv if bfloat16_matmuls else pointwise_conv


class ConvBN(nnx.Module):
  """conv + BatchNorm + ReLU, initialised as the UvA tutorial does.

  The GoogleNet's convs have a bias; a ResNet's do not (`use_bias=False`: BN
  follows) and its block's second conv adds the shortcut before the ReLU
  (`relu=False`). Padded by kernel // 2 on each side, as PyTorch's CIFAR
  ResNets are: a strided conv's output j is centred on input `stride * j`,
  the pixel the ResNet's shortcut keeps. With `bfloat16_matmuls` a stride-1
  convolution multiplies in bfloat16 and sums in float32, forward and
  backward; everything else computes in `dtype`.
  """

  def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1,
               use_bias: bool = True, relu: bool = True, dtype, bfloat16_matmuls: bool,
               rngs: nnx.Rngs):
    self.conv = nnx.Conv(
        c_in, c_out, (kernel, kernel), strides=stride, padding=kernel // 2, use_bias=use_bias,
        dtype=dtype, kernel_init=nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
        conv_general_dilated=conv_function(kernel, bfloat16_matmuls, stride),
        rngs=rngs)
    # PyTorch's BN momentum 0.1 is Flax's 0.9.
    self.bn = nnx.BatchNorm(c_out, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.relu = relu

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.bn(self.conv(x), use_running_average=not train)
    return nnx.relu(y) if self.relu else y

