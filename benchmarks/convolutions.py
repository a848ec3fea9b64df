r"""The ways to compute each of a convolution's three products, timed on the networks' shapes.

  python -m benchmarks.convolutions                 # prints the table, ~10 minutes
  python -m benchmarks.convolutions --write         # and writes this CPU's entry of
                                                    # l0jax/convolutions.json

For every distinct stride-1 convolution with a kernel larger than 1x1 of
`--networks` (model:depth-or-width:image size:channels), in float32 and in
bfloat16 (`compute_dtype=bfloat16_matmuls`), times at `--batch_size`,
one call after the other and interleaved, `--repeats` times:
- `autodiff`: `lax.conv_general_dilated` and JAX's gradient, forward and
  backward together (float32 only: it is what the model runs without an entry);
- each method of `convolutions.FORWARD`, `INPUT_GRAD` and `KERNEL_GRAD` alone.
A shape's entry is the fastest method of each product by median CPU time
(the figure a run's CPU-hours are made of), written only where their sum
beats what the model runs without an entry (`autodiff` in float32, XLA's
three products in bfloat16) by more than `--margin`; the table's other CPUs
are kept. Prints one line a shape and product: median wall and CPU ms.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from l0jax import convolutions, networks, run_config

FLAGS = flags.FLAGS
flags.DEFINE_list("networks", ["googlenet:1.0:32:3", "googlenet:0.5:28:1", "resnet:20:32:3",
                               "vgg:11:32:3"],
                  "model:X:image size:channels, X a googlenet's width or a resnet's or vgg's depth.")
flags.DEFINE_integer("batch_size", 128, "Images a call.")
flags.DEFINE_integer("repeats", 5, "Timed calls per method (the median counts).")
flags.DEFINE_float("margin", 0.05, "Write an entry only where it saves more than this share.")
flags.DEFINE_bool("write", False, "Write this CPU's entry of l0jax/convolutions.json.")


def network_shapes(spec: str) -> list[tuple[int, int, int, int]]:
  """(map size, in, out, kernel) of a network's stride-1 convolutions larger than 1x1."""
  model, x, size, channels = spec.split(":")
  config = run_config.base_config()
  if model == "googlenet":
    config.update(model=model, width_multiplier=float(x))
  else:
    config.update(model=model, depth=int(x))
  graph, _ = networks.channel_graph(config, (int(size), int(size), int(channels)), 10)
  return [(graph.out_hw(layer.name), layer.c_in, layer.c_out, layer.kernel)
          for layer in graph.layers if not layer.dense and layer.kernel > 1 and layer.stride == 1]


def timed(f, *args) -> tuple[float, float]:
  start, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - start, time.process_time() - cpu


def product_calls(x, kernel, g, bfloat16: bool) -> dict[tuple[str, str], tuple]:
  """{(product, method): (compiled function, its arguments)} for one shape."""
  k = kernel.shape[0]
  cast = (lambda a: a.astype(jnp.bfloat16)) if bfloat16 else (lambda a: a)
  calls = {}
  if not bfloat16:
    def autodiff(x, kernel, g):
      y, vjp = jax.vjp(lambda x, w: jax.lax.conv_general_dilated(
          x, w, (1, 1), "SAME", dimension_numbers=convolutions.SPECS), x, kernel)
      return y, *vjp(g)
    calls["all", "autodiff"] = (jax.jit(autodiff), (x, kernel, g))
  for name, f in convolutions.FORWARD.items():
    calls["forward", name] = (jax.jit(lambda x, w, f=f: f(cast(x), cast(w))), (x, kernel))
  for name, f in convolutions.INPUT_GRAD.items():
    calls["input_grad", name] = (jax.jit(lambda g, w, f=f: f(cast(g), cast(w))), (g, kernel))
  for name, f in convolutions.KERNEL_GRAD.items():
    calls["kernel_grad", name] = (jax.jit(lambda x, g, f=f: f(cast(x), cast(g), k)), (x, g))
  return calls


def measure(size: int, c_in: int, c_out: int, k: int, bfloat16: bool) -> dict:
  """Median (wall, CPU) seconds of every call of `product_calls`, after checking their values."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((FLAGS.batch_size, size, size, c_in)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)) / np.sqrt(k * k * c_in),
                       jnp.float32)
  g = jnp.asarray(rng.standard_normal((FLAGS.batch_size, size, size, c_out)), jnp.float32)
  calls = product_calls(x, kernel, g, bfloat16)
  y, vjp = jax.vjp(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=convolutions.SPECS,
      precision=jax.lax.Precision.HIGHEST), x, kernel)
  reference = dict(zip(convolutions.Methods._fields, (y, *vjp(g))))
  for (product, method), (f, args) in calls.items():
    outs = f(*args) if product == "all" else [f(*args)]
    for out, want in zip(outs, reference.values() if product == "all" else [reference[product]]):
      np.testing.assert_allclose(out, want, atol=(2e-2 if bfloat16 else 1e-4) * np.abs(want).max(),
                                 err_msg=f"{product} {method}")
  times = {name: [] for name in calls}
  for _ in range(FLAGS.repeats):
    for name, (f, args) in calls.items():
      times[name].append(timed(f, *args))
  return {name: np.median(t, 0) for name, t in times.items()}


def choose(times: dict, bfloat16: bool) -> tuple[convolutions.Methods, float, float]:
  """The fastest method of each product by CPU time, with its CPU seconds and the default's."""
  best = {product: min((m for p, m in times if p == product), key=lambda m: times[product, m][1])
          for product in convolutions.Methods._fields}
  chosen = convolutions.Methods(**best)
  cost = sum(times[p, m][1] for p, m in zip(chosen._fields, chosen))
  default = (times["all", "autodiff"][1] if not bfloat16 else
             sum(times[p, "xla"][1] for p in convolutions.Methods._fields))
  return chosen, cost, default


def main(argv):
  del argv
  shapes = list(dict.fromkeys(s for spec in FLAGS.networks for s in network_shapes(spec)))
  print(f"# {len(shapes)} shapes, batch {FLAGS.batch_size}, CPU {convolutions.cpu_kind()}, "
        f"JAX {jax.__version__}; median ms a call: wall (CPU)")
  entries = {}
  for bfloat16 in (False, True):
    dtype = convolutions.dtype_key(bfloat16)
    for size, c_in, c_out, k in shapes:
      times = measure(size, c_in, c_out, k, bfloat16)
      chosen, cost, default = choose(times, bfloat16)
      key = convolutions.shape_key((0, size, size, c_in), (k, k, c_in, c_out))
      cells = "  ".join(f"{p} {m} {w * 1e3:.1f} ({c * 1e3:.1f})" for (p, m), (w, c) in times.items())
      keep = cost < (1 - FLAGS.margin) * default
      print(f"{dtype:<16} {key:<22} {cells}  -> {'/'.join(chosen) if keep else 'default'} "
            f"{cost * 1e3:.1f} vs {default * 1e3:.1f} CPU ms", flush=True)
      if keep:
        entries.setdefault(dtype, {})[key] = chosen._asdict()
  if FLAGS.write:
    path = convolutions.TABLE_FILE
    table = json.loads(path.read_text()) if path.exists() else {"cpus": {}}
    table["cpus"][convolutions.cpu_kind()] = {
        "jax": jax.__version__, "batch_size": FLAGS.batch_size, "networks": FLAGS.networks,
        "methods": entries}
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
