"""Stride-1 'SAME' NHWC convolutions, each of their three products computed the fastest measured way.

A convolution's training costs three products: the forward, the input
gradient and the kernel gradient. JAX's own gradient of
`lax.conv_general_dilated` is not the fastest way to compute the last two on
XLA:CPU at every shape, and XLA's convolution is not the fastest forward at
every shape either; which way wins depends on the shape and the CPU. `conv`
computes each product by the method `convolutions.json` names for the shape,
the CPU and the dtype. `benchmarks/convolutions.py --write` measures the
methods and writes that table. A shape or CPU the table lacks keeps today's
convolution: `lax.conv_general_dilated` with JAX's gradient in float32, XLA's
own three products in bfloat16.

In bfloat16 (`compute_dtype=bfloat16_matmuls`) every product multiplies
bfloat16 operands and sums in float32, the cotangent rounded to bfloat16
as PyTorch's autocast does; JAX's gradient of a product with
`preferred_element_type` would multiply the float32 cotangent in float32.
"""

import functools
import json
import pathlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

TABLE_FILE = pathlib.Path(__file__).with_name("convolutions.json")
SPECS = ("NHWC", "HWIO", "NHWC")


class Methods(NamedTuple):
  """How each of a convolution's three products is computed (names in `FORWARD`, ...)."""

  forward: str = "xla"
  input_grad: str = "xla"
  kernel_grad: str = "xla"


def _sum_dtype(x: jax.Array, bfloat16: bool) -> jax.Array:
  return x.astype(jnp.bfloat16) if bfloat16 else x


def _xla_conv(lhs: jax.Array, rhs: jax.Array, specs=SPECS, padding="SAME") -> jax.Array:
  return jax.lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=specs,
                                      preferred_element_type=jnp.float32)


def _shifted(x: jax.Array, k: int) -> list[jax.Array]:
  """The k*k copies of `x` shifted by each kernel tap, 'SAME'-padded, in the kernel's order."""
  h, w = x.shape[1:3]
  p = k // 2
  x = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
  return [x[:, i:i + h, j:j + w] for i in range(k) for j in range(k)]


def _patches(x: jax.Array, k: int) -> jax.Array:
  return jnp.concatenate(_shifted(x, k), -1)


def _over_pixels(a: jax.Array, b: jax.Array) -> jax.Array:
  """`a[N, H, W, P]^T @ b[N, H, W, Q]`: a `[P, Q]` sum over every pixel of the batch."""
  return jax.lax.dot_general(a, b, (((0, 1, 2), (0, 1, 2)), ((), ())),
                             preferred_element_type=jnp.float32)


def _forward_xla(x, kernel):
  return _xla_conv(x, kernel)


def _forward_im2col(x, kernel):
  k, c_out = kernel.shape[0], kernel.shape[-1]
  return jax.lax.dot_general(_patches(x, k), kernel.reshape(-1, c_out),
                             (((3,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _input_grad_xla(g, kernel):
  # The transpose of the forward: the kernel flipped in space, its in and out swapped.
  return _xla_conv(g, kernel[::-1, ::-1], ("NHWC", "HWOI", "NHWC"))


def _input_grad_im2col(g, kernel):
  return _forward_im2col(g, jnp.swapaxes(kernel[::-1, ::-1], 2, 3))


def _kernel_grad_xla(x, g, k):
  # A convolution over the batch whose window is the whole image.
  pad = [(k // 2, (k - 1) // 2)] * 2
  return _xla_conv(x, g, ("CHWN", "IHWO", "HWNC"), pad)


def _kernel_grad_im2col(x, g, k):
  return _over_pixels(_patches(x, k), g).reshape(k, k, x.shape[-1], g.shape[-1])


def _kernel_grad_taps(x, g, k):
  # One [Ci, Co] dot a tap: no k*k-wide copy of the input at once.
  taps = [_over_pixels(s, g) for s in _shifted(x, k)]
  return jnp.stack(taps).reshape(k, k, x.shape[-1], g.shape[-1])


FORWARD = {"xla": _forward_xla, "im2col": _forward_im2col}
INPUT_GRAD = {"xla": _input_grad_xla, "im2col": _input_grad_im2col}
KERNEL_GRAD = {"xla": _kernel_grad_xla, "im2col": _kernel_grad_im2col, "taps": _kernel_grad_taps}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_with(x: jax.Array, kernel: jax.Array, methods: Methods, bfloat16: bool) -> jax.Array:
  """The convolution of `x[N, H, W, Ci]` by `kernel[k, k, Ci, Co]` (odd k), its products by `methods`."""
  return FORWARD[methods.forward](_sum_dtype(x, bfloat16), _sum_dtype(kernel, bfloat16))


def _conv_with_fwd(x, kernel, methods, bfloat16):
  x, kernel = _sum_dtype(x, bfloat16), _sum_dtype(kernel, bfloat16)
  return FORWARD[methods.forward](x, kernel), (x, kernel)


def _conv_with_bwd(methods, bfloat16, residuals, g):
  x, kernel = residuals
  g = _sum_dtype(g, bfloat16)
  return (INPUT_GRAD[methods.input_grad](g, kernel),
          KERNEL_GRAD[methods.kernel_grad](x, g, kernel.shape[0]))


conv_with.defvjp(_conv_with_fwd, _conv_with_bwd)


def cpu_kind() -> str:
  """This CPU's vendor, family and model, as /proc/cpuinfo names them: what the table is keyed by."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    return "unknown"
  return "-".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model"))


def shape_key(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> str:
  """`"HxW Ci->Co kxk"`: a convolution's shape, its batch left out."""
  h, w = x_shape[1:3]
  k, _, c_in, c_out = kernel_shape
  return f"{h}x{w} {c_in}->{c_out} {k}x{k}"


def dtype_key(bfloat16: bool) -> str:
  return "bfloat16_matmuls" if bfloat16 else "float32"


@functools.cache
def _table() -> dict:
  """This CPU's entries of `convolutions.json`: `{dtype: {shape: Methods}}`."""
  if not TABLE_FILE.exists():
    return {}
  cpus = json.loads(TABLE_FILE.read_text())["cpus"]
  mine = cpus.get(cpu_kind(), {}).get("methods", {})
  return {dtype: {shape: Methods(**m) for shape, m in shapes.items()}
          for dtype, shapes in mine.items()}


def methods_for(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...],
                bfloat16: bool) -> Methods | None:
  """The measured methods for a convolution on this CPU, None where the table has none."""
  return _table().get(dtype_key(bfloat16), {}).get(shape_key(x_shape, kernel_shape))


def same_conv(bfloat16: bool) -> Callable[..., jax.Array]:
  """What `nnx.Conv` calls for a stride-1 convolution padded to keep the size (NHWC, HWIO)."""
  def conv(inputs: jax.Array, kernel: jax.Array, *args, **kwargs) -> jax.Array:
    methods = methods_for(inputs.shape, kernel.shape, bfloat16)
    if methods is None and not bfloat16:
      return jax.lax.conv_general_dilated(inputs, kernel, *args, **kwargs)
    return conv_with(inputs, kernel, methods or Methods(), bfloat16)
  return conv
