r"""Training and evaluation images/s of the compiled steps main.py runs, with and without gates.

  python -m benchmarks.throughput                                   # CPU-sized, ~2 minutes
  python -m benchmarks.throughput --batch_sizes=128,512 \
      --dtypes=float32,bfloat16 --repeats=10 --eval_examples=5000   # an accelerator
  python -m benchmarks.throughput --model=resnet --depth=56         # another network

Synthetic uint8 images of CIFAR-10's shape sit on the devices as in a real
run. A timed training call is one `train.make_train_steps` call of as many
steps as a run's calls have (gather, on-device augmentation, forward, L0
term, AdamW), followed by fetching its per-step metrics, as the training loop
does; evaluation is one `evaluator.Evaluator` call. The baseline's and the
gated network's calls alternate, so that load from other processes hits both
alike; on a CPU the gates' cost is also given in CPU time, which such load
leaves alone. Compile time is the first call's time less a later call's. The
estimated run adds compile times and `--epochs` of training and validation at
the measured rates (no checkpoints, logs or data loading). Prints one JSON
object, then a table.
"""

import contextlib
import json
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from l0jax import batches, data, evaluator, networks, optimizer, run_config, sharding, train

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["128"], "Training batch sizes to time.")
flags.DEFINE_list("dtypes", ["auto"], "compute_dtype values to time (auto, float32, bfloat16, "
                  "bfloat16_matmuls).")
flags.DEFINE_enum("model", "googlenet", run_config.MODELS, "config.model: the network timed.")
flags.DEFINE_integer("depth", 0, "config.depth (0: the model's usual one).")
flags.DEFINE_float("width_multiplier", 1.0, "Network width (1.0: the full GoogleNet).")
flags.DEFINE_integer("image_size", 32, "Square synthetic images of this size, 3 channels.")
flags.DEFINE_integer("num_train", 10_000, "Synthetic images; 90% of them are the training split.")
flags.DEFINE_integer("steps", 0, "config.steps_per_call: training steps per compiled call "
                     "(0: the default, 1 on CPU and 100 on accelerators).")
flags.DEFINE_integer("repeats", 3, "Timed calls per network (the median counts).")
flags.DEFINE_integer("eval_examples", 1000, "Images per timed evaluation call.")
flags.DEFINE_integer("eval_batch_size", 1000, "config.eval_batch_size.")
flags.DEFINE_integer("epochs", 180, "Epochs of the estimated full run.")
flags.DEFINE_integer("epoch_examples", 45_000, "Training images an epoch in the estimated run.")
flags.DEFINE_integer("val_examples", 5_000, "Validation images an epoch in the estimated run.")
flags.DEFINE_integer("seed", 0, "Seed of the networks, data and batch order.")
flags.DEFINE_string("profile_dir", "", "If set, a jax.profiler trace of the timed calls goes here "
                    "(TensorBoard's profile plugin, or its *.trace.json.gz in Perfetto).")


class Calls(NamedTuple):
  """One network's compiled calls with their arguments bound; each returns when its result has."""

  train: Callable[[], None]
  evaluate: Callable[[], None]
  train_images: int  # per call
  eval_images: int


def run_of(config, dataset: data.Dataset, network: networks.Network, params, batch_stats,
           mesh) -> train.Run:
  """The `train.Run` that `train.setup` would make of these, without its checks and logging."""
  epoch_steps = batches.steps_per_epoch(len(dataset.train_images), config.batch_size)
  schedule = optimizer.learning_rate_schedule(config, epoch_steps)
  return train.Run(config, run_config.gate_plan(config), dataset, network, params, batch_stats,
                   mesh, epoch_steps, schedule, optimizer.create_optimizer(config, schedule))


def network_calls(config, dataset: data.Dataset, mesh, rng: np.random.Generator) -> Calls:
  """The training and evaluation calls of one network, as `train.train_and_evaluate` makes them."""
  network, params, batch_stats = networks.create_network(config, dataset.train_images.shape[1:],
                                                         dataset.num_classes, dataset.mean,
                                                         dataset.std)
  run = run_of(config, dataset, network, params, batch_stats, mesh)
  state = train.initial_state(run)  # replicated over the mesh
  replicated = NamedSharding(mesh, P())
  images = sharding.to_devices(dataset.train_images, replicated)
  labels = sharding.to_devices(dataset.train_labels, replicated)
  train_steps = train.make_train_steps(train.bound_step(run), mesh, config.seed)
  eval_images = dataset.train_images[:FLAGS.eval_examples]
  evaluate = evaluator.Evaluator(network, eval_images, dataset.train_labels[:FLAGS.eval_examples],
                                 config.eval_batch_size, mesh)
  steps = batches.steps_per_call(config.steps_per_call,
                              FLAGS.epoch_examples // config.batch_size)
  valid = sharding.to_devices(np.ones(steps, bool), replicated)

  def train_call():
    nonlocal state
    indices = rng.integers(0, len(dataset.train_images), (steps, config.batch_size), dtype=np.int32)
    state, metrics = train_steps(state, images, labels,
                                 sharding.to_devices(indices, NamedSharding(mesh, P(None, "data"))),
                                 valid)
    if not np.all(np.isfinite(jax.device_get(metrics)["loss"])):
      raise FloatingPointError("the training loss is not finite")

  def evaluate_call():
    evaluate(state.params, state.batch_stats)

  return Calls(train_call, evaluate_call, steps * config.batch_size, len(eval_images))


class Timing(NamedTuple):
  """Seconds of one network's calls."""

  first_s: float  # the first call: tracing, compiling and one run
  s: float  # median of `--repeats` later calls
  cpu_s: float  # their median CPU time of this process, all threads


def seconds(call: Callable[[], None]) -> tuple[float, float]:
  """Wall and process CPU seconds of one call."""
  start, cpu_start = time.perf_counter(), time.process_time()
  call()
  return time.perf_counter() - start, time.process_time() - cpu_start


def measure(calls: dict[bool, Callable[[], None]]) -> dict[bool, Timing]:
  """Each call's timing; after the first calls and a warm-up, the calls alternate."""
  first = {use_gate: seconds(call)[0] for use_gate, call in calls.items()}
  for call in calls.values():
    call()
  timed = {use_gate: [] for use_gate in calls}
  with (jax.profiler.trace(FLAGS.profile_dir, create_perfetto_trace=True) if FLAGS.profile_dir
        else contextlib.nullcontext()):
    for _ in range(FLAGS.repeats):
      for use_gate, call in calls.items():
        timed[use_gate].append(seconds(call))
  return {use_gate: Timing(first[use_gate], *np.median(timed[use_gate], axis=0).tolist())
          for use_gate in calls}


def benchmark(dtype: str, batch_size: int, dataset: data.Dataset, mesh) -> list[dict]:
  """Results of the baseline and the gated network at one dtype and batch size."""
  rng = np.random.default_rng(FLAGS.seed)
  nets = {}
  for use_gate in (False, True):  # The gated network second: results[1] below.
    config = run_config.base_config()
    config.update(dataset="synthetic", model=FLAGS.model, depth=FLAGS.depth,
                  width_multiplier=FLAGS.width_multiplier, use_gate=use_gate,
                  compute_dtype=dtype, batch_size=batch_size, steps_per_call=FLAGS.steps,
                  eval_batch_size=FLAGS.eval_batch_size, seed=FLAGS.seed)
    run_config.validate(config)
    nets[use_gate] = network_calls(config, dataset, mesh, rng)
  trained = measure({use_gate: t.train for use_gate, t in nets.items()})
  evaluated = measure({use_gate: t.evaluate for use_gate, t in nets.items()})
  results = []
  for use_gate in nets:
    t, e = trained[use_gate], evaluated[use_gate]
    train_rate, eval_rate = nets[use_gate].train_images / t.s, nets[use_gate].eval_images / e.s
    compile_s, eval_compile_s = t.first_s - t.s, e.first_s - e.s
    results.append({
        "dtype": jnp.dtype(networks.compute_dtype(dtype)).name if dtype == "auto" else dtype,
        "batch_size": batch_size,
        "gates": use_gate, "steps_per_call": nets[use_gate].train_images // batch_size,
        "train_images_per_s": round(train_rate, 1),
        "eval_images_per_s": round(eval_rate, 1),
        "train_compile_s": round(compile_s, 2),
        "eval_compile_s": round(eval_compile_s, 2),
        "estimated_run_s": round(
            compile_s + eval_compile_s + FLAGS.epochs * (FLAGS.epoch_examples / train_rate
                                                          + FLAGS.val_examples / eval_rate), 1),
    })
  gated = results[1]
  gated["gate_overhead"] = round(trained[True].s / trained[False].s - 1, 4)
  if jax.default_backend() == "cpu":  # Work done, whatever else the machine runs.
    gated["gate_overhead_cpu_time"] = round(trained[True].cpu_s / trained[False].cpu_s - 1, 4)
  return results


def synthetic_dataset() -> data.Dataset:
  """`--num_train` synthetic uint8 images of `--image_size`, 3 channels."""
  config = run_config.base_config()
  config.update(dataset="synthetic", synthetic_image_size=FLAGS.image_size,
                synthetic_num_train=FLAGS.num_train)
  return data.load_dataset(config)


def main(argv):
  del argv
  dataset = synthetic_dataset()
  mesh = sharding.data_mesh()
  results = [r for dtype in FLAGS.dtypes for batch_size in map(int, FLAGS.batch_sizes)
             for r in benchmark(dtype, batch_size, dataset, mesh)]
  print(json.dumps({
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "device_count": jax.device_count(), "model": FLAGS.model, "depth": FLAGS.depth,
      "width_multiplier": FLAGS.width_multiplier,
      "image_size": FLAGS.image_size, "repeats": FLAGS.repeats,
      "eval_examples": min(FLAGS.eval_examples, len(dataset.train_images)), "estimated_run": {
          "epochs": FLAGS.epochs, "epoch_examples": FLAGS.epoch_examples,
          "val_examples": FLAGS.val_examples},
      "results": results}))
  print(f"\n{'dtype':<16} {'batch':>6} {'gates':>5} {'train img/s':>12} {'eval img/s':>11} "
        f"{'eval/train':>10} {'compile s':>10} {'gate cost':>9} {'(CPU time)':>10} "
        f"{'est. run s':>10}")
  percent = lambda r, key: f"{r[key]:+.1%}" if key in r else ""
  for r in results:
    print(f"{r['dtype']:<16} {r['batch_size']:>6} {'yes' if r['gates'] else 'no':>5} "
          f"{r['train_images_per_s']:>12,.0f} {r['eval_images_per_s']:>11,.0f} "
          f"{r['eval_images_per_s'] / r['train_images_per_s']:>9.1f}x "
          f"{r['train_compile_s']:>10.1f} {percent(r, 'gate_overhead'):>9} "
          f"{percent(r, 'gate_overhead_cpu_time'):>10} {r['estimated_run_s']:>10,.0f}")


if __name__ == "__main__":
  app.run(main)
