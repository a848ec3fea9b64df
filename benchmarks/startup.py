r"""Where the time to the first training step goes, in a fresh process, as `main.py` starts.

  python -m benchmarks.startup                           # full width, 32x32x3, batch 128
  python -m benchmarks.startup --compilation_cache=DIR   # twice: the second loads the programs

Wall and CPU seconds of each stage: importing JAX and l0jax, the synthetic
data, `networks.create_network` (building and initialising the network), the
optimizer state, and the first `train.make_train_steps` call (tracing,
compiling, one step); then a second call, for the step alone. Prints one
JSON object, then a table.
"""

import json
import os
import sys
import time

START = time.perf_counter(), time.process_time()

# pylint: disable=wrong-import-position
import jax
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from l0jax import batches, cli, data, networks, optimizer, run_config, sharding, train

FLAGS = flags.FLAGS
flags.DEFINE_string("compute_dtype", "auto", "config.compute_dtype.")
flags.DEFINE_float("width_multiplier", 1.0, "Network width (1.0: the full GoogleNet).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_string("compilation_cache", "", "JAX's persistent compilation cache, as main.py's "
                    "flag of that name ('': none, so that everything compiles).")


def main(argv):
  del argv
  stages = {}
  last = START

  def stage(name: str):
    nonlocal last
    now = time.perf_counter(), time.process_time()
    stages[name] = {"wall_s": round(now[0] - last[0], 2), "cpu_s": round(now[1] - last[1], 2)}
    last = now

  cli.use_compilation_cache(FLAGS.compilation_cache)
  stage("import")
  config = run_config.base_config()
  config.update(dataset="synthetic", compute_dtype=FLAGS.compute_dtype,
                width_multiplier=FLAGS.width_multiplier, batch_size=FLAGS.batch_size)
  dataset = data.load_dataset(config)
  mesh = sharding.data_mesh()
  stage("data")
  network, params, batch_stats = networks.create_network(config, dataset.train_images.shape[1:],
                                                         dataset.num_classes, dataset.mean,
                                                         dataset.std)
  stage("create_network")
  epoch_steps = batches.steps_per_epoch(len(dataset.train_images), config.batch_size)
  schedule = optimizer.learning_rate_schedule(config, epoch_steps)
  run = train.Run(config, run_config.gate_plan(config), dataset, network, params, batch_stats,
                  mesh, epoch_steps, schedule, optimizer.create_optimizer(config, schedule))
  state = train.initial_state(run)
  replicated = NamedSharding(mesh, P())
  images, labels = (sharding.to_devices(a, replicated)
                    for a in (dataset.train_images, dataset.train_labels))
  stage("optimizer state")
  train_steps = train.make_train_steps(train.bound_step(run), mesh, config.seed)
  indices = NamedSharding(mesh, P(None, "data"))
  rng = np.random.default_rng(0)

  def call():
    nonlocal state
    batch = rng.integers(0, len(dataset.train_images), (1, config.batch_size), dtype=np.int32)
    state, metrics = train_steps(state, images, labels, sharding.to_devices(batch, indices),
                                 np.ones(1, bool))
    jax.device_get(metrics)

  call()
  stage("first training call")
  total = {k: round(sum(s[k] for s in stages.values()), 2) for k in ("wall_s", "cpu_s")}
  call()
  stage("a later training call")
  print(json.dumps({"compute_dtype": config.compute_dtype, "width_multiplier":
                    FLAGS.width_multiplier, "compilation_cache": FLAGS.compilation_cache,
                    "load_average": os.getloadavg(),
                    "to_first_step": total, "stages": stages}))
  print(f"\n{'stage':<22} {'wall s':>7} {'CPU s':>7}")
  for name, s in stages.items():
    print(f"{name:<22} {s['wall_s']:>7.1f} {s['cpu_s']:>7.1f}")
  print(f"{'to the first step':<22} {total['wall_s']:>7.1f} {total['cpu_s']:>7.1f}")
  print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
