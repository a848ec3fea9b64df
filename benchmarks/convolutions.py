r"""Candidate ways to run the network's 3x3 and 5x5 convolutions, timed on its real shapes.

  python -m benchmarks.convolutions                      # full width, batch 128, ~3 minutes

For every distinct (map size, in, out, kernel) of the stem and the blocks'
3x3 and 5x5 convolutions, forward and forward+backward (the gradients of
the input and the kernel), one after the other and interleaved:
- `float32`: XLA's convolution in float32 (compute_dtype=float32);
- `bf16 conv`: `model.bfloat16_conv`, XLA's convolution on bfloat16 inputs
  with float32 accumulation (compute_dtype=bfloat16_matmuls);
- `bf16 im2col`: the k*k shifted copies concatenated on channels, then one
  `model.bfloat16_dot`;
- `bf16 shifted`: a float32 sum of k*k `model.bfloat16_dot`s of shifted copies.
Prints the median milliseconds (wall and this process's CPU time) a call.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from l0jax import model

FLAGS = flags.FLAGS
flags.DEFINE_float("width_multiplier", 1.0, "Network width (1.0: the full GoogleNet).")
flags.DEFINE_integer("batch_size", 128, "Images a call.")
flags.DEFINE_integer("image_size", 32, "The stem's map size.")
flags.DEFINE_integer("repeats", 5, "Timed calls per candidate (the median counts).")


def shifted(x: jax.Array, k: int) -> list[jax.Array]:
  """The k*k copies of `x` shifted by each kernel tap, zero-padded as 'SAME'."""
  h, w = x.shape[1:3]
  p = k // 2
  x = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
  return [x[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)]


def im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
  k = kernel.shape[0]
  patches = jnp.concatenate(shifted(x, k), -1)
  return model.bfloat16_dot(patches, kernel.reshape(-1, kernel.shape[-1]))


def shifted_dots(x: jax.Array, kernel: jax.Array) -> jax.Array:
  k = kernel.shape[0]
  return sum(model.bfloat16_dot(s, kernel[i // k, i % k]) for i, s in enumerate(shifted(x, k)))


CANDIDATES = {
    "float32": lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
    "bf16 conv": model.bfloat16_conv,
    "bf16 im2col": im2col,
    "bf16 shifted": shifted_dots,
}


def network_shapes() -> list[tuple[int, int, int, int]]:
  """(map size, in, out, kernel) of the stem and every block's 3x3 and 5x5, each once."""
  arch = model.Architecture.at_width(FLAGS.width_multiplier)
  size = FLAGS.image_size
  shapes = [(size, 3, arch.stem, 3)]
  for i, b in enumerate(arch.blocks):
    shapes += [(size, b.red3, b.out3, 3), (size, b.red5, b.out5, 5)]
    if i in model.POOL_AFTER:
      size = (size - 1) // 2 + 1
  return list(dict.fromkeys(shapes))


def timed(f, *args) -> tuple[float, float]:
  start, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - start, time.process_time() - cpu


def main(argv):
  del argv
  print(f"{'shape (HxW in->out kxk)':<26} {'GFLOP':>6} {'candidate':<13} "
        f"{'fwd ms':>8} {'(CPU)':>8} {'fwd+bwd ms':>10} {'(CPU)':>8}")
  for size, c_in, c_out, k in network_shapes():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((FLAGS.batch_size, size, size, c_in)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)) / np.sqrt(k * k * c_in),
                         jnp.float32)
    calls = {}
    for name, conv in CANDIDATES.items():
      forward = jax.jit(conv)
      backward = jax.jit(jax.grad(lambda x, w, conv=conv: jnp.sum(conv(x, w) ** 2), (0, 1)))
      calls[name] = (forward, backward)
      for f in calls[name]:
        timed(f, x, kernel)
    times = {name: ([], []) for name in calls}
    for _ in range(FLAGS.repeats):
      for name, fs in calls.items():
        for f, out in zip(fs, times[name]):
          out.append(timed(f, x, kernel))
    gflop = 2 * FLAGS.batch_size * size * size * k * k * c_in * c_out / 1e9
    for name, (fwd, both) in times.items():
      (fw, fc), (bw, bc) = np.median(fwd, 0) * 1e3, np.median(both, 0) * 1e3
      print(f"{f'{size}x{size} {c_in}->{c_out} {k}x{k}':<26} {gflop:>6.2f} {name:<13} "
            f"{fw:>8.1f} {fc:>8.1f} {bw:>10.1f} {bc:>8.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
