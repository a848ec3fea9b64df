r"""Training steps with fixed gates: every channel masked, against the kept channels alone.

  python -m benchmarks.compact_training                      # protocol size, ~5 minutes on CPU
  python -m benchmarks.compact_training --width_multiplier=1 --image_size=32

At each budget a random mask (`masks`, `random`, of the MACs) fixes the
gates of one gated network; its training call (`train.make_train_steps`,
as a retraining or mask run makes it) is timed computing every channel
(`compact_training=False`) and the kept ones alone, the two alternating so
that other load hits both alike. Prints one JSON object, then a table of CPU
seconds a step (this process, all threads) and the speed-up.
"""

import functools
import json
from typing import Callable

import jax
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import throughput
from l0jax import accounting, masks, networks, pruning, run_config, sharding, train

FLAGS = flags.FLAGS
flags.DEFINE_list("budgets", ["0.75", "0.5", "0.25", "0.1"], "Kept fractions of the MACs.")
FLAGS.set_default("width_multiplier", 0.5)
FLAGS.set_default("image_size", 28)
FLAGS.set_default("repeats", 5)


def fixed_state(run: train.Run, budget: float) -> train.TrainState:
  """The initial state with the gates of a random mask at `budget` of the MACs."""
  state = train.initial_state(run)
  log_alphas = masks.mask_log_alphas("random", state.params, run.network.graph, "macs", budget,
                                     key=jax.random.key(FLAGS.seed))
  params = pruning.with_log_alphas(run.network, state.params, state.batch_stats, log_alphas)
  return sharding.replicate(state._replace(params=params), run.mesh)


def step_calls(run: train.Run, state: train.TrainState) -> dict[str, Callable[[], None]]:
  """The masked and the compact training call from `state`, each one step of a fresh batch."""
  images = sharding.replicate(run.dataset.train_images, run.mesh)
  labels = sharding.replicate(run.dataset.train_labels, run.mesh)
  rng = np.random.default_rng(FLAGS.seed)
  valid = sharding.replicate(np.ones(1, bool), run.mesh)
  batches = NamedSharding(run.mesh, P(None, "data"))
  calls = {}
  for name, kept in (("masked", None),
                     ("compact", pruning.computed_channels(run.network, state, True))):
    steps = train.make_train_steps(functools.partial(train.bound_step(run), kept=kept), run.mesh,
                                   run.config.seed)
    states = {"state": jax.tree.map(jax.numpy.copy, state)}  # each call donates its own

    def call(steps=steps, states=states):
      indices = rng.integers(0, len(run.dataset.train_images), (1, run.config.batch_size),
                             dtype=np.int32)
      states["state"], metrics = steps(states["state"], images, labels,
                                       sharding.to_devices(indices, batches), valid)
      jax.block_until_ready(metrics)

    calls[name] = call
  return calls


def main(argv):
  del argv
  dataset = throughput.synthetic_dataset()
  config = run_config.base_config()
  config.update(dataset="synthetic", model=FLAGS.model, depth=FLAGS.depth,
                width_multiplier=FLAGS.width_multiplier, use_gate=True, train_gates=False,
                compute_dtype="float32", batch_size=128, seed=FLAGS.seed)
  network, params, batch_stats = networks.create_network(
      config, dataset.train_images.shape[1:], dataset.num_classes, dataset.mean, dataset.std)
  run = throughput.run_of(config, dataset, network, params, batch_stats, sharding.data_mesh())
  results = []
  for budget in map(float, FLAGS.budgets):
    state = fixed_state(run, budget)
    kept = accounting.kept_fractions(network.graph, accounting.deterministic_kept(
        pruning.log_alphas_of(network, state.params, state.batch_stats)))["macs"]
    calls = step_calls(run, state)
    for call in calls.values():  # compile, then one warm-up call
      call()
      call()
    timed = {name: [] for name in calls}
    for _ in range(FLAGS.repeats):
      for name, call in calls.items():
        timed[name].append(throughput.seconds(call)[1])
    cpu_s = {name: float(np.median(t)) for name, t in timed.items()}
    results.append({"budget": budget, "macs_kept": round(float(kept), 4),
                    **{f"{name}_cpu_s_per_step": round(s, 4) for name, s in cpu_s.items()},
                    "speedup": round(cpu_s["masked"] / cpu_s["compact"], 3)})
  print(json.dumps({"device": str(jax.devices()[0].device_kind), "model": FLAGS.model,
                    "depth": FLAGS.depth, "width_multiplier": FLAGS.width_multiplier,
                    "image_size": FLAGS.image_size, "batch_size": 128, "dtype": "float32",
                    "repeats": FLAGS.repeats, "results": results}))
  print(f"\n{'budget':>6} {'MACs kept':>9} {'masked CPU s':>12} {'compact CPU s':>13} "
        f"{'speed-up':>8}")
  for r in results:
    print(f"{r['budget']:>6g} {r['macs_kept']:>9.1%} {r['masked_cpu_s_per_step']:>12.3f} "
          f"{r['compact_cpu_s_per_step']:>13.3f} {r['speedup']:>7.2f}x")


if __name__ == "__main__":
  app.run(main)
