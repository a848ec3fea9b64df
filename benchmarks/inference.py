r"""Inference throughput of the full, gated (test-time gates), folded and compact GoogleNets.

  python -m benchmarks.inference                                  # small, ~1 minute on a CPU
  python -m benchmarks.inference --batch_sizes=1,128,1024 --repeats=50

The gated network gets random gates, `--prune_fraction` of its channels
pruned and the rest partly or fully open; the compact network is exported
from it. The folded network is the same export with every gate open: the
full network with BN folded into its convs, so that "compact vs folded" is
what pruning alone gives. Weights are random: throughput does not depend on them. Prints one
JSON object, then a table.
"""

import json
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from l0jax import accounting, export, model

FLAGS = flags.FLAGS
flags.DEFINE_float("width_multiplier", 1.0, "Network width (1.0: the full GoogleNet).")
flags.DEFINE_integer("image_size", 32, "Square input images of this size, 3 channels.")
flags.DEFINE_integer("num_classes", 10, "Classes of the dense head.")
flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes to time.")
flags.DEFINE_float("prune_fraction", 0.5, "Fraction of gated channels pruned, at random.")
flags.DEFINE_integer("repeats", 10, "Timed calls per network and batch size (the median counts).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, gates and images.")


def gated_network(rng: np.random.Generator) -> model.GoogleNet:
  net = model.GoogleNet(FLAGS.num_classes, 3, width_multiplier=FLAGS.width_multiplier,
                        rngs=nnx.Rngs(FLAGS.seed))
  for block in net.blocks:
    for gate in block.gates:
      n = gate.log_alpha.shape[0]
      # Kept channels: log_alpha > -2.4, so a test-time gate in (0, 1].
      log_alpha = np.where(rng.random(n) < FLAGS.prune_fraction, -10.0, rng.uniform(-2.0, 6.0, n))
      gate.log_alpha[...] = jnp.asarray(log_alpha, jnp.float32)
  return net


def with_open_gates(net: model.GoogleNet) -> model.GoogleNet:
  """A copy of `net` with every gate fully open at test time: nothing pruned."""
  net = nnx.clone(net)
  for block in net.blocks:
    for gate in block.gates:
      gate.log_alpha[...] = jnp.full_like(gate.log_alpha[...], 10.0)
  return net


def module_inference(net: nnx.Module):
  graphdef, state = nnx.split(net)
  f = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False))
  return lambda x: f(state, x)


def images_per_second(networks: dict[str, Callable], images: jax.Array) -> dict[str, float]:
  """Each network's median over `--repeats` timed calls, after a compiling call and a warm-up
  one; the calls interleaved (A, B, C, A, B, C, ...), so that a slower spell of the machine hits
  every network alike."""
  for f in networks.values():
    for _ in range(2):
      jax.block_until_ready(f(images))
  seconds = {name: [] for name in networks}
  for _ in range(FLAGS.repeats):
    for name, f in networks.items():
      start = time.perf_counter()
      jax.block_until_ready(f(images))
      seconds[name].append(time.perf_counter() - start)
  return {name: len(images) / float(np.median(s)) for name, s in seconds.items()}


def main(argv):
  del argv
  rng = np.random.default_rng(FLAGS.seed)
  gated = gated_network(rng)
  full = model.GoogleNet(FLAGS.num_classes, 3, use_gate=False,
                         width_multiplier=FLAGS.width_multiplier, rngs=nnx.Rngs(FLAGS.seed))
  graph = gated.channel_graph(FLAGS.image_size)
  compact = export.compact_params(gated, graph)
  folded = export.compact_params(with_open_gates(gated), graph)
  networks = {
      "full": module_inference(full),
      "gated": module_inference(gated),
      "folded": jax.jit(lambda x: export.compact_apply(graph, folded, x)),
      "compact": jax.jit(lambda x: export.compact_apply(graph, compact, x)),
  }
  summary = accounting.report(graph, graph.log_alphas(gated))
  macs = {"full": summary["macs_full"], "gated": summary["macs_full"],
          "folded": summary["macs_full"], "compact": summary["macs_kept"]}
  results = []
  for batch_size in map(int, FLAGS.batch_sizes):
    images = jnp.asarray(rng.standard_normal((batch_size, FLAGS.image_size, FLAGS.image_size, 3)),
                         jnp.float32)
    for name, speed in images_per_second(networks, images).items():
      results.append({"network": name, "batch_size": batch_size, "images_per_s": round(speed, 1),
                      "macs_per_image": macs[name]})
  print(json.dumps({
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "width_multiplier": FLAGS.width_multiplier, "image_size": FLAGS.image_size,
      "prune_fraction": FLAGS.prune_fraction, "repeats": FLAGS.repeats,
      "params_full": summary["params_full"], "params_folded": export.num_params(folded),
      "params_compact": export.num_params(compact), "results": results}))
  print(f"\n{'network':<8} {'batch':>6} {'images/s':>10} {'MMACs/image':>12} {'vs full':>8} "
        f"{'vs folded':>10}")
  speed = {(r["network"], r["batch_size"]): r["images_per_s"] for r in results}
  for r in results:
    print(f"{r['network']:<8} {r['batch_size']:>6} {r['images_per_s']:>10,.1f} "
          f"{r['macs_per_image'] / 1e6:>12.2f} "
          f"{r['images_per_s'] / speed['full', r['batch_size']]:>7.2f}x "
          f"{r['images_per_s'] / speed['folded', r['batch_size']]:>9.2f}x")


if __name__ == "__main__":
  app.run(main)
