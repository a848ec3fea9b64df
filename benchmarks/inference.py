r"""Inference throughput of the GoogleNet full, gated, folded and compact, in JAX and onnxruntime.

  python -m benchmarks.inference                        # full width, 32x32x3, batch 1 and 64
  python -m benchmarks.inference --batch_sizes=1,128,1024 --repeats=50
  python -m benchmarks.inference --width_multiplier=0.5 --image_size=28 --channels=1
                                                        # the Fashion-MNIST protocol's networks

For each of `--macs_fractions`, the gated network gets random gates: the
fewest channels pruned at random that bring its MACs to that fraction of the
full network's, the rest partly or fully open; its compact network is
exported from it. The folded network is the same export with every gate
open: the full network with BN folded into its convs, so that "compact vs
folded" is what pruning alone gives. The folded and compact networks run as
the export serves them (uint8 images in, normalisation inside): in JAX
(`export.serving_function`, jitted) and, with the onnx extra installed, in
onnxruntime on the CPU (`onnx_export`, the model of inference.onnx), each
runtime with its default threads. The full and gated modules take normalised
images. Weights are random: throughput does not depend on them. Prints one
JSON object, then a table.
"""

import json
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from l0jax import accounting, export, googlenet, graphs, onnx_export

FLAGS = flags.FLAGS
flags.DEFINE_float("width_multiplier", 1.0, "Network width (1.0: the full GoogleNet).")
flags.DEFINE_integer("image_size", 32, "Square input images of this size.")
flags.DEFINE_integer("channels", 3, "Channels of the input images.")
flags.DEFINE_integer("num_classes", 10, "Classes of the dense head.")
flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes to time.")
flags.DEFINE_list("macs_fractions", ["0.5", "0.25"],
                  "Compact networks pruned at random to these fractions of the full MACs.")
flags.DEFINE_integer("repeats", 10, "Timed calls per network and batch size (the median counts).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, gates and images.")

PRUNED, OPEN = -10.0, 10.0  # log_alpha of a test-time gate of 0, and of 1


def network(use_gate: bool) -> googlenet.GoogleNet:
  return googlenet.GoogleNet(FLAGS.num_classes, FLAGS.channels, use_gate=use_gate,
                             width_multiplier=FLAGS.width_multiplier, rngs=nnx.Rngs(FLAGS.seed))


def with_gates(net: nnx.Module, graph: graphs.Graph,
               log_alphas: dict[str, np.ndarray]) -> nnx.Module:
  net = nnx.clone(net)
  graph.set_log_alphas(net, log_alphas)
  return net


def pruned_to(fraction: float, net: nnx.Module, graph: graphs.Graph,
              rng: np.random.Generator) -> nnx.Module:
  """`net` with channels pruned in a random order until its MACs are `fraction` of the full
  network's (or just below); the kept ones partly or fully open (log_alpha > -2.4)."""
  order = {g.name: rng.random(g.size) for g in graph.gates}
  kept_log_alpha = {g.name: rng.uniform(-2.0, 6.0, g.size) for g in graph.gates}

  def macs(q: float) -> float:  # the MACs kept with the channels of order < q pruned
    kept = {name: accounting.Kept(int(np.sum(o >= q)), int(np.any(o >= q)))
            for name, o in order.items()}
    return accounting.kept_fractions(graph, kept)["macs"]

  low, high = 0.0, 1.0
  for _ in range(30):  # bisection on q, to 1e-9: far finer than one channel
    mid = (low + high) / 2
    low, high = (mid, high) if macs(mid) > fraction else (low, mid)
  return with_gates(net, graph, {name: np.where(o < high, PRUNED, kept_log_alpha[name])
                                 for name, o in order.items()})


def module_inference(net: nnx.Module) -> Callable:
  graphdef, state = nnx.split(net)
  f = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False))
  return lambda x: f(state, x)


def runtimes(graph: graphs.Graph, params: dict, mean: np.ndarray,
             std: np.ndarray) -> dict[str, Callable]:
  """The export's serving function (uint8 images in) in JAX and, if installed, onnxruntime."""
  served = {"jax": jax.jit(export.serving_function(graph, params, mean, std))}
  if onnx_export.available():
    served["onnxruntime"] = onnx_export.session(
        onnx_export.model(graph, params, mean, std).SerializeToString())
  return served


def images_per_second(networks: dict[tuple, Callable],
                      inputs: dict[tuple, np.ndarray]) -> dict[tuple, float]:
  """Each network's median over `--repeats` timed calls on its input, after a compiling call and
  a warm-up one; the calls interleaved (A, B, C, A, B, C, ...), so that a slower spell of the
  machine hits every network alike."""
  for key, f in networks.items():
    for _ in range(2):
      jax.block_until_ready(f(inputs[key]))
  seconds = {key: [] for key in networks}
  for _ in range(FLAGS.repeats):
    for key, f in networks.items():
      start = time.perf_counter()
      jax.block_until_ready(f(inputs[key]))
      seconds[key].append(time.perf_counter() - start)
  return {key: len(inputs[key]) / float(np.median(s)) for key, s in seconds.items()}


def print_table(results: list[dict]) -> None:
  """Each row's rate against the full module's and the folded network's in its own runtime."""
  print(f"\n{'network':<12} {'runtime':<12} {'batch':>6} {'images/s':>10} {'MMACs/image':>12} "
        f"{'vs full':>8} {'vs folded':>10} {'folded MACs/MACs':>17}")
  rows = {(r["network"], r["runtime"], r["batch_size"]): r for r in results}
  for r in results:
    full = rows["full", "jax", r["batch_size"]]
    folded = rows["folded", r["runtime"], r["batch_size"]]
    print(f"{r['network']:<12} {r['runtime']:<12} {r['batch_size']:>6} "
          f"{r['images_per_s']:>10,.1f} {r['macs_per_image'] / 1e6:>12.2f} "
          f"{r['images_per_s'] / full['images_per_s']:>7.2f}x "
          f"{r['images_per_s'] / folded['images_per_s']:>9.2f}x "
          f"{folded['macs_per_image'] / r['macs_per_image']:>16.2f}x")


def main(argv):
  del argv
  rng = np.random.default_rng(FLAGS.seed)
  gated = network(use_gate=True)
  graph = gated.channel_graph(FLAGS.image_size)
  mean, std = np.full(FLAGS.channels, 127.5), np.full(FLAGS.channels, 64.0)  # any will do
  params_full, macs_full = accounting.totals(accounting.count(graph, None))
  if not onnx_export.available():
    print(f"no onnxruntime rows: the onnx extra is not installed ({onnx_export.EXTRA})",
          file=sys.stderr)
  pruned = {f"compact {f:.0%}": pruned_to(f, gated, graph, rng)
            for f in map(float, FLAGS.macs_fractions)}
  networks = {("full", "jax"): module_inference(network(use_gate=False)),
              # As costly at any fraction: the gated module computes every channel.
              ("gated", "jax"): module_inference(next(iter(pruned.values())))}
  macs = {"full": macs_full, "gated": macs_full, "folded": macs_full}
  params = {"folded": export.compact_params(with_gates(
      gated, graph, {g.name: np.full(g.size, OPEN) for g in graph.gates}), graph)}
  for name, net in pruned.items():
    params[name] = export.compact_params(net, graph)
    macs[name] = accounting.report(graph, graph.log_alphas(net))["macs_kept"]
  for name, p in params.items():
    for runtime, f in runtimes(graph, p, mean, std).items():
      networks[name, runtime] = f
  results = []
  for batch_size in map(int, FLAGS.batch_sizes):
    uint8 = rng.integers(0, 256, (batch_size, FLAGS.image_size, FLAGS.image_size,
                                  FLAGS.channels), np.uint8)
    normalised = jnp.asarray((uint8 - mean) / std, jnp.float32)
    inputs = {key: normalised if key[0] in ("full", "gated") else uint8 for key in networks}
    for (name, runtime), speed in images_per_second(networks, inputs).items():
      results.append({"network": name, "runtime": runtime, "batch_size": batch_size,
                      "images_per_s": round(speed, 1), "macs_per_image": macs[name]})
  print(json.dumps({
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "onnxruntime": (onnx_export.info()["verified_with"]["onnxruntime"]
                      if onnx_export.available() else None),
      "width_multiplier": FLAGS.width_multiplier, "image_size": FLAGS.image_size,
      "channels": FLAGS.channels, "macs_fractions": [float(f) for f in FLAGS.macs_fractions],
      "repeats": FLAGS.repeats, "macs_full": macs_full, "params_full": params_full,
      "params": {name: export.num_params(p) for name, p in params.items()},
      "results": results}))
  print_table(results)


if __name__ == "__main__":
  app.run(main)
