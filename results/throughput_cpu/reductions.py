"""Issue 41: is BN's reduction over N, H, W slow on XLA:CPU, or is it memory-bound?

The profile's largest kind is the backward's `reduce_sum` fusions (BN's and the
bias's gradient sums). This times, in one process and interleaved, a fused
`jnp.sum(x * y, axis=(0, 1, 2))` with `jnp.sum(y, ...)` against the same two
sums as matmuls with a ones vector (the form a GEMM library would run), float32,
on activation shapes of the full-width GoogleNet at batch 128.

  PYTHONPATH=. python results/throughput_cpu/reductions.py
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def reduce_sums(x, y):
  return jnp.sum(x * y, axis=(0, 1, 2)), jnp.sum(y, axis=(0, 1, 2))


def dot_sums(x, y):
  ones = jnp.ones((1, x.size // x.shape[-1]), x.dtype)
  return ones @ (x * y).reshape(-1, x.shape[-1]), ones @ y.reshape(-1, y.shape[-1])


def einsum_sums(x, y):
  stacked = jnp.stack([x * y, y]).reshape(2, -1, x.shape[-1])
  return jnp.einsum("k,bkc->bc", jnp.ones(stacked.shape[1], x.dtype), stacked)


def main():
  print(f"jax {jax.__version__}, load {os.getloadavg()[0]:.2f}; median of 5, ms")
  methods = {"fused reduce": reduce_sums, "ones @ x": dot_sums, "einsum": einsum_sums}
  rng = np.random.default_rng(0)
  for shape in [(128, 32, 32, 64), (128, 16, 16, 256), (128, 8, 8, 512)]:
    x, y = (jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(2))
    calls = {name: jax.jit(f) for name, f in methods.items()}
    for call in calls.values():
      jax.block_until_ready(call(x, y))
    times = {name: [] for name in calls}
    for _ in range(5):
      for name, call in calls.items():
        start = time.process_time()
        jax.block_until_ready(call(x, y))
        times[name].append(1e3 * (time.process_time() - start))
    read = 2 * x.nbytes / 1e9
    print(shape, ", ".join(f"{n} {np.median(t):.1f} CPU-ms ({read / np.median(t) * 1e3:.0f} GB/s read)"
                           for n, t in times.items()))


if __name__ == "__main__":
  main()
