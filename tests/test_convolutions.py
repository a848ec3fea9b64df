"""The convolution's products by every method, and the measured table that chooses them."""

import itertools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import convolutions

METHODS = [convolutions.Methods(*m) for m in itertools.product(
    convolutions.FORWARD, convolutions.INPUT_GRAD, convolutions.KERNEL_GRAD)]


def reference(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=convolutions.SPECS,
                                      precision=jax.lax.Precision.HIGHEST)


def value_and_grads(f, x, kernel, cotangent):
  y, vjp = jax.vjp(f, x, kernel)
  return (y, *vjp(cotangent))


@pytest.mark.parametrize("methods", METHODS, ids=lambda m: "/".join(m))
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("bfloat16", [False, True])
def test_every_method_matches_lax_conv(methods, kernel_size, bfloat16):
  """Values and both gradients, on a non-square map with more channels out than in.

  In bfloat16 each must equal, up to the order of the float32 sums, the
  float32 convolution of the inputs and the cotangent rounded to bfloat16.
  """
  keys = jax.random.split(jax.random.key(kernel_size), 3)
  x = jax.random.normal(keys[0], (2, 7, 5, 3))
  kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, 3, 4))
  cotangent = jax.random.normal(keys[2], (2, 7, 5, 4))
  got = value_and_grads(lambda x, k: convolutions.conv_with(x, k, methods, bfloat16),
                        x, kernel, cotangent)
  assert all(a.dtype == jnp.float32 and a.shape == b.shape
             for a, b in zip(got, (cotangent, x, kernel)))
  rounded = (lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)) if bfloat16 else (lambda a: a)
  want = value_and_grads(reference, rounded(x), rounded(kernel), rounded(cotangent))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


def test_same_conv_runs_the_methods_the_table_names_and_xla_elsewhere(monkeypatch):
  x, kernel = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 5))
  named = convolutions.Methods("im2col", "xla", "taps")
  monkeypatch.setattr(convolutions, "_table", lambda: {
      "float32": {convolutions.shape_key(x.shape, kernel.shape): named}})
  assert convolutions.methods_for(x.shape, kernel.shape, bfloat16=False) == named
  assert convolutions.methods_for(x.shape, kernel.shape, bfloat16=True) is None
  assert convolutions.methods_for((1, 7, 7, 2), kernel.shape, bfloat16=False) is None

  conv = convolutions.same_conv(bfloat16=False)
  args = ((1, 1), ((1, 1), (1, 1)))

  def gradient_program(x):
    f = lambda x, k: conv(x, k, *args, dimension_numbers=convolutions.SPECS).sum()
    return str(jax.make_jaxpr(jax.grad(f, (0, 1)))(x, kernel))

  # The table's: an im2col forward, XLA's input gradient, a dot a tap for the kernel's.
  named = gradient_program(x)
  assert named.count("conv_general_dilated[") == 1 and "concatenate[" in named
  # Elsewhere JAX's gradient of XLA's convolution: three convolutions, no copies.
  plain = gradient_program(jnp.ones((1, 7, 7, 2)))
  assert plain.count("conv_general_dilated[") == 3 and "concatenate[" not in plain


def test_the_shipped_table_names_known_methods_for_valid_shapes():
  table = json.loads(convolutions.TABLE_FILE.read_text())
  for cpu, entry in table["cpus"].items():
    assert set(entry) == {"jax", "batch_size", "networks", "methods"}, cpu
    for dtype, shapes in entry["methods"].items():
      assert dtype in ("float32", "bfloat16_matmuls")
      for shape, methods in shapes.items():
        m = convolutions.Methods(**methods)
        assert (m.forward in convolutions.FORWARD and m.input_grad in convolutions.INPUT_GRAD
                and m.kernel_grad in convolutions.KERNEL_GRAD), (cpu, shape, m)
        h, w, c_in, c_out, k = map(int, re.fullmatch(r"(\d+)x(\d+) (\d+)->(\d+) (\d+)x\d+",
                                                      shape).groups())
        assert convolutions.shape_key((1, h, w, c_in), (k, k, c_in, c_out)) == shape


def test_cpu_kind_names_vendor_family_and_model():
  kind = convolutions.cpu_kind()
  assert kind == "unknown" or len(kind.split("-")) >= 3
