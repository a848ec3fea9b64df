"""What XLA's cost analysis says of one training step of arm 4's network and of arm 4b's.

    PYTHONPATH=. python results/fashion_mnist_2/step_cost.py > results/fashion_mnist_2/step_cost.txt

At protocol 2's size (GoogleNet at width 0.5, 28x28x1 synthetic images, batch 128, float32), a
random mask at 10% of the MACs (`benchmarks.compact_training`'s, seed 0) fixes the gates, once
with the branch outputs gated (arm 4) and once with the reduce layers gated too (arm 4b,
`gate_reduce`). Each step, computing every channel (masked) and the kept ones alone (compact,
as the protocol's fixed-gate runs do), is compiled and its cost analysis printed: floating-point
operations, bytes accessed, and the fusions in its optimised HLO. It compiles only and times
nothing, so other load does not change it. The masks are not the protocol runs' own (those
were drawn with each run's seed and realised cost), only of the same kind.
"""

import functools
import json

import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import throughput
from benchmarks.compact_training import fixed_state
from l0jax import accounting, networks, pruning, run_config, sharding, train

FLAGS = flags.FLAGS
FLAGS.set_default("width_multiplier", 0.5)
FLAGS.set_default("image_size", 28)
BUDGET = 0.1


def step_costs(gate_reduce: bool) -> list[dict]:
  dataset = throughput.synthetic_dataset()
  config = run_config.base_config()
  config.update(dataset="synthetic", width_multiplier=FLAGS.width_multiplier, use_gate=True,
                train_gates=False, compute_dtype="float32", batch_size=128, seed=FLAGS.seed,
                gate_reduce=gate_reduce)
  network, params, batch_stats = networks.create_network(
      config, dataset.train_images.shape[1:], dataset.num_classes, dataset.mean, dataset.std)
  run = throughput.run_of(config, dataset, network, params, batch_stats, sharding.data_mesh())
  state = fixed_state(run, BUDGET)
  log_alphas = pruning.log_alphas_of(network, state.params, state.batch_stats)
  kept = accounting.deterministic_kept(log_alphas)
  arrays = [sharding.replicate(a, run.mesh) for a in (dataset.train_images, dataset.train_labels)]
  batch = sharding.to_devices(np.zeros((1, config.batch_size), np.int32),
                              NamedSharding(run.mesh, P(None, "data")))
  valid = sharding.replicate(np.ones(1, bool), run.mesh)
  costs = []
  for step, channels in (("masked", None),
                         ("compact", pruning.computed_channels(network, state, True))):
    steps = train.make_train_steps(functools.partial(train.bound_step(run), kept=channels),
                                   run.mesh, config.seed)
    compiled = steps.lower(state, *arrays, batch, valid).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    costs.append({
        "gate_reduce": gate_reduce, "step": step,
        "kept_channels": f"{sum(int(k.channels) for k in kept.values())} of "
                         f"{sum(np.size(a) for a in log_alphas.values())}",
        "macs_kept": round(float(accounting.kept_fractions(network.graph, kept)["macs"]), 4),
        "gflops": round(analysis["flops"] / 1e9, 3),
        "bytes_accessed_mb": round(analysis["bytes accessed"] / 1e6, 1),
        "fusions": compiled.as_text().count(" fusion(")})
  return costs


def main(argv):
  del argv
  rows = step_costs(False) + step_costs(True)
  for row in rows:
    print(json.dumps(row))
  print(f"\n{'reduce gated':>12} {'step':>8} {'kept':>10} {'MACs':>6} {'GFLOP':>6} "
        f"{'MB accessed':>11} {'fusions':>7}")
  for r in rows:
    print(f"{str(r['gate_reduce']):>12} {r['step']:>8} {r['kept_channels']:>10} "
          f"{r['macs_kept']:>6.1%} {r['gflops']:>6.2f} {r['bytes_accessed_mb']:>11,.0f} "
          f"{r['fusions']:>7}")


if __name__ == "__main__":
  app.run(main)
