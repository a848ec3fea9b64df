"""Where a GoogleNet training step's CPU time goes: its gradient with one kind of operation made trivial.

  python results/throughput_cpu/ablation.py 7                     # every variant, 7 interleaved calls
  W=0.5 S=28 C=1 python results/throughput_cpu/ablation.py 7 as_is  # the protocol's size, one variant
  XLA_FLAGS=... python results/throughput_cpu/ablation.py 5 as_is   # the step under XLA flags
  BF16=1 python results/throughput_cpu/ablation.py 5 as_is          # compute_dtype=bfloat16_matmuls

Times the jitted gradient of the cross-entropy of a gated GoogleNet (width W,
SxSxC images, batch 128, BN in training mode, training gates drawn) with
respect to its parameters, and the same gradient with one part of the network
replaced by something of the same shape and next to no cost: the 3x3
max-pools by a strided slice, the 1x1 convolutions by a broadcast, the 3x3 and
5x5 convolutions by 1x1 ones, BN by the identity, no gates, no conv biases.
The variants are not additive: a share is what removing that part saves, the
replacement's own cost included. Prints the median wall and CPU (this
process) milliseconds a call, interleaved over the variants.
"""

import contextlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from l0jax import model

WIDTH, SIZE, CHANNELS = float(os.environ.get("W", 1.0)), int(os.environ.get("S", 32)), int(
    os.environ.get("C", 3))


@contextlib.contextmanager
def patched(owner, name, value):
  old = getattr(owner, name)
  setattr(owner, name, value)
  try:
    yield
  finally:
    setattr(owner, name, old)


def conv_function(trivial_kernel_sizes):
  def function(kernel_size, bfloat16_matmuls, stride=1):
    if kernel_size == 1 and 1 in trivial_kernel_sizes:
      return lambda x, w, *a, **k: jnp.broadcast_to(x[..., :1], (*x.shape[:-1], w.shape[-1])) * w[0, 0, 0]
    if kernel_size > 1 and "spatial" in trivial_kernel_sizes:
      return lambda x, w, *a, **k: jnp.dot(x, w[kernel_size // 2, kernel_size // 2])
    return model_conv_function(kernel_size, bfloat16_matmuls, stride)
  return function


def no_bias_conv(init):
  def conv_init(self, *args, **kwargs):
    init(self, *args, **{**kwargs, "use_bias": False})
  return conv_init


model_conv_function = model.conv_function
VARIANTS = {
    "as_is": contextlib.nullcontext,
    "no_pools": lambda: patched(model, "max_pool_3x3", lambda x, s: x[:, ::s, ::s]),
    "trivial_1x1_convs": lambda: patched(model, "conv_function", conv_function({1})),
    "spatial_convs_as_1x1": lambda: patched(model, "conv_function", conv_function({"spatial"})),
    "no_bn": lambda: patched(nnx.BatchNorm, "__call__", lambda self, x, **k: x),
    "no_gates": contextlib.nullcontext,
    "no_conv_bias": lambda: patched(nnx.Conv, "__init__", no_bias_conv(nnx.Conv.__init__)),
}


def gradient(use_gate: bool):
  net = model.GoogleNet(10, CHANNELS, use_gate=use_gate, width_multiplier=WIDTH,
                        bfloat16_matmuls=bool(os.environ.get("BF16")), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)

  def loss(params, rest, x, y, key):
    logits = nnx.merge(graphdef, params, rest, copy=True)(x, train=True, gate_key=key)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(y, 10), -1))
  return jax.jit(jax.grad(loss)), params, rest


def main(repeats: int, names: list[str]):
  rng = np.random.default_rng(0)
  args = (jnp.asarray(rng.standard_normal((128, SIZE, SIZE, CHANNELS)), jnp.float32),
          jnp.asarray(rng.integers(0, 10, 128)), jax.random.key(0))
  calls = {}
  for name in names:
    with VARIANTS[name]():
      f, params, rest = gradient(use_gate=name != "no_gates")
      jax.block_until_ready(f(params, rest, *args))  # compiled inside the patch
    calls[name] = lambda f=f, params=params, rest=rest: f(params, rest, *args)
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(call())
      times[name].append((time.perf_counter() - start, time.process_time() - cpu))
  base = np.median([c for _, c in times[names[0]]])
  for name, t in times.items():
    wall, cpu = np.median(t, 0)
    print(f"{name:<22} wall {wall * 1e3:7.0f} ms  CPU {cpu * 1e3:7.0f} ms  "
          f"CPU saved {1 - cpu / base:+.0%}", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, sys.argv[2:] or list(VARIANTS))
