"""Training: a pure step function over pytrees, and the loop that drives it.

The whole dataset sits on the devices as uint8. A compiled call runs
`steps_per_call` training steps in a `lax.scan`, gathering each batch by index,
augmenting and normalising it on the device. Everything random is derived from
(seed, step) or (seed, epoch), so a run resumed from a checkpoint continues
exactly as if it had never stopped. A run starts or resumes
(`start_or_resume`), then trains epoch by epoch (`train_epoch`), each ending
with the validation split's accuracy, a history record and a checkpoint
(`end_epoch`). The network is networks.py's, the gates' handling pruning.py's.
"""

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from l0jax import accounting, batches, budgets, cli, data, evaluator, networks, optimizer
from l0jax import checkpoints, kept_channels, pruning, sharding, versions, warm_start, workdirs
from l0jax import run_config, writers
from l0jax.errors import UserError


class TrainState(NamedTuple):
  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState
  # The multipliers of a run pruned to a budget; None otherwise, and then not saved
  # (`versions.saved_fields`).
  lagrangian: budgets.Lagrangian | None = None


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array, *,
               network: networks.Network, tx: optax.GradientTransformation,
               plan: run_config.GatePlan,
               budget: budgets.Budget | None = None,
               settled: bool = False,
               kept: kept_channels.KeptChannels | None = None) -> tuple[TrainState, dict]:
  """One AdamW step on cross-entropy + lambda_l0 * L0 term, for a uint8 batch.

  With a `budget` the L0 term is its Lagrangian instead, and its multipliers
  take one step of gradient ascent on it (`budgets.Budget.ascend`). With gates fixed by the
  `plan`, or a budget's gates `settled`, the gates act with their test-time
  values and only the cross-entropy is minimised, over the weights alone; with
  `kept` (`pruning.computed_channels`) only those channels are computed. Training gates
  are held within the plan's `log_alpha_bound`, if it has one.
  """
  aug_key, gate_key = jax.random.split(key)
  # Augmented in float32 and rounded to the compute dtype once.
  images = data.normalize(images, network.mean, network.std)
  images = data.augment(aug_key, images).astype(network.dtype)
  fixed = settled or plan.fixed_from_start
  if fixed:
    gate_key = None  # The test-time gates.

  multipliers = state.lagrangian and state.lagrangian.multipliers

  def loss_fn(params, batch_stats):
    if fixed:
      params = pruning.stop_gate_gradients(params)
    logits, batch_stats, net = network.apply(params, batch_stats, images, train=True,
                                             gate_key=gate_key, kept=kept)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    metrics = pruning.gate_metrics(network, net, plan.penalty, fixed=fixed)
    if budget:
      metrics.update(pruning.budget_metrics(budget, network, net, metrics, state.step, multipliers,
                                    settled))
      loss = ce if settled else ce + metrics["l0"]
    else:
      loss = ce if fixed else ce + plan.lambda_l0 * metrics["l0"]
    metrics.update(loss=loss, cross_entropy=ce, accuracy=jnp.mean(logits.argmax(-1) == labels))
    return loss, (batch_stats, metrics)

  grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params,
                                                                  state.batch_stats)
  lagrangian = (budget.ascend(state.lagrangian, budget.multiplier_cost_of(metrics),
                               metrics["target"]) if budget and not settled
                else state.lagrangian)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if plan.log_alpha_bound and not fixed:
    params = pruning.bound_gates(params, plan.log_alpha_bound)
  if settled:
    # Adam's momentum would move the gates without a gradient: they stay as settled.
    params = pruning.restore_gates(params, state.params)
  return TrainState(state.step + 1, params, batch_stats, opt_state, lagrangian), metrics


def make_train_steps(step: Callable, mesh: jax.sharding.Mesh, seed: int) -> Callable:
  """A compiled `(state, images, labels, indices[n, B], valid[n]) -> (state, per-step metrics)`
  of `step`, a `train_step` with all but its arrays and key bound (`bound_step`).

  Every call has the same number of steps, so it compiles once; the last call
  of an epoch marks the steps it does not need as not `valid`, and drops their
  results. They are computed all the same: a `lax.cond` around the step makes
  XLA copy the whole state every step, and on a GPU wait for the predicate on
  the host. `steps_per_call` keeps them to at most one per call; their
  metrics are 0.
  """
  train_key = jax.random.fold_in(jax.random.key(seed), 1)
  batch_sharding = NamedSharding(mesh, P("data"))

  def one_step(state, indices, images, labels):
    batch = jax.lax.with_sharding_constraint(images[indices], batch_sharding)
    key = jax.random.fold_in(train_key, state.step)
    return step(state, batch, labels[indices], key)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_steps(state, images, labels, indices, valid):
    if indices.shape[0] == 1:  # No loop: see `steps_per_call`.
      state, metrics = one_step(state, indices[0], images, labels)
      return state, jax.tree.map(lambda m: m[None], metrics)

    def body(state, xs):
      indices, valid = xs
      new_state, metrics = one_step(state, indices, images, labels)
      keep = lambda new, old: jnp.where(valid, new, old)
      return jax.tree.map(keep, new_state, state), jax.tree.map(lambda m: keep(m, 0), metrics)

    return jax.lax.scan(body, state, (indices, valid))

  return train_steps


class Run(NamedTuple):
  """A run's config resolved once: gate plan, data, initial network, optimizer, mesh, budget."""

  config: ml_collections.ConfigDict
  plan: run_config.GatePlan
  dataset: data.Dataset
  network: networks.Network
  params: nnx.State
  batch_stats: nnx.State
  mesh: Any
  epoch_steps: int  # training steps an epoch
  schedule: optax.Schedule  # the learning rate at each step, that `tx` follows
  tx: optax.GradientTransformation
  # The budget the run is pruned to, resolved once from the plan; None without one.
  budget: budgets.Budget | None = None


def bound_step(run: Run) -> Callable:
  """`train_step` with the run's network, optimizer, gate plan and budget bound."""
  return functools.partial(train_step, network=run.network, tx=run.tx, plan=run.plan,
                           budget=run.budget)


def setup(config: ml_collections.ConfigDict, workdir: str | None = None) -> Run:
  """The run `config` describes: validated, then its data and initial network, each announced on
  the console as it is ready.

  With the `workdir` to train in, everything about it that can be refused (its
  saved network, its history, init_from) is checked before anything is written.
  """
  # Again: main.py checked the flags' config before JAX loaded, not the source's fields since.
  plan = run_config.validate(config)
  if workdir is not None:
    warm_start.check_same_network(workdir, config)
    checkpoints.check_history_has_checkpoints(workdir)
    if config.init_from and not checkpoints.has_checkpoints(workdir):  # before data and network
      warm_start.init_source(config.init_from, config, plan.gates == run_config.RETRAIN)
  if config.batch_size % jax.device_count():
    raise UserError(f"batch_size={config.batch_size} does not divide over "
                    f"{jax.device_count()} devices")
  start = time.monotonic()
  dataset = data.load_dataset(config)
  image_shape = dataset.train_images.shape[1:]
  data_seconds, start = time.monotonic() - start, time.monotonic()
  # One channel graph, that a budget is checked against and the network trains with.
  network, params, batch_stats = networks.create_network(config, image_shape,
                                                         dataset.num_classes, dataset.mean,
                                                         dataset.std)
  if plan.gates == run_config.BUDGET:  # Refused before anything is announced, as other bad input.
    budgets.check_reachable(plan.target, network.graph)
  sizes = [f"{len(x):,}" for x in (dataset.train_images, dataset.val_images, dataset.test_images)]
  logging.info("Data: %s from %s: %s training, %s validation, %s test images of %s (%.1f s).",
               dataset.name, dataset.source, *sizes, "x".join(map(str, image_shape)),
               data_seconds)
  num_params, macs = accounting.totals(accounting.count(network.graph, None))
  logging.info("Network: %s at width %g, %s, %s parameters, %.2f M MACs per image, "
               "%s on %d %s device(s) (%.1f s).", network.name,
               config.width_multiplier,
               "gated" if config.use_gate else "no gates", f"{num_params:,}", macs / 1e6,
               jnp.dtype(network.dtype).name, jax.device_count(), jax.default_backend(),
               time.monotonic() - start)
  epoch_steps = batches.steps_per_epoch(len(dataset.train_images), config.batch_size)
  budget = budgets.Budget.from_config(config, plan, epoch_steps)
  schedule = optimizer.learning_rate_schedule(config, epoch_steps)
  return Run(config, plan, dataset, network, params, batch_stats, sharding.data_mesh(),
             epoch_steps, schedule, optimizer.create_optimizer(config, schedule), budget)


def initial_state(run: Run) -> TrainState:
  """The step-0 state, replicated over the run's mesh.

  Replicated so that a checkpoint restored into it lands on the devices that
  evaluate it (Orbax restores into the target's shardings).
  """
  state = networks.run_once(lambda params, batch_stats: TrainState(
      jnp.zeros((), jnp.int32), params, batch_stats, run.tx.init(params),
      run.budget.init() if run.budget else None), run.params, run.batch_stats)
  return sharding.replicate(state, run.mesh)


def _means(calls: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Each metric's mean over the steps of `calls` (per-call arrays of per-step values)."""
  return {k: float(np.concatenate([m[k] for m in calls]).mean()) for k in calls[0]}


def start_or_resume(run: Run, workdir: epath.Path) -> TrainState:
  """The state to train from: the workdir's newest checkpoint, else init_from's weights (with a
  mask's gates, fixed), else the initial state."""
  config, plan = run.config, run.plan
  state = initial_state(run)
  restored = checkpoints.restore_latest(str(workdir), state)
  if restored is not None:
    latest, state = restored
    logging.info("Resuming %s from step %d.", workdir, latest)
  elif config.init_from:
    params, batch_stats = warm_start.load_weights(config.init_from, config, state.params,
                                                state.batch_stats,
                                                with_gates=plan.gates == run_config.RETRAIN)
    if plan.gates == run_config.MASK:
      params = pruning.mask_gates(run.network, plan, config.seed, params, batch_stats)
    state = sharding.replicate(state._replace(params=params, batch_stats=batch_stats,
                                              opt_state=run.tx.init(params)), run.mesh)
    logging.info("Network weights from the %s checkpoint of %s; %s.", config.init_checkpoint,
                 config.init_from, f"gates start at droprate_init={config.droprate_init:g}"
                 if not plan.fixed_from_start else "its gates fixed"
                 if plan.gates == run_config.RETRAIN else f"gates from the {plan.mask} mask")
  return state


class Loop(NamedTuple):
  """What every epoch of a run uses, made once before the first."""

  run: Run
  workdir: epath.Path
  budget: budgets.Budget | None
  train_steps: Callable
  settled_steps: Callable | None  # the budget's, made once its gates are settled
  images: jax.Array
  labels: jax.Array
  evaluate_val: evaluator.Evaluator
  writer: writers.MetricWriter
  progress: writers.Progress
  mngr: ocp.CheckpointManager
  schedule: Callable
  chunk: int  # training steps per call


def train_epoch(loop: Loop, stop: cli.StopSignals, state: TrainState, epoch: int, step: int,
                first_call: bool) -> tuple[TrainState, int, list[dict[str, np.ndarray]]]:
  """The epoch's training calls from `step` on: the state, its step, and each call's metrics."""
  config, mesh, epoch_steps = loop.run.config, loop.run.mesh, loop.run.epoch_steps
  chunk = loop.chunk
  settled = loop.budget and epoch >= loop.budget.settle_epoch
  steps = loop.settled_steps if settled else loop.train_steps
  order = batches.epoch_order(config.seed, epoch, len(loop.run.dataset.train_images),
                              config.batch_size)
  batch_sharding, replicated = NamedSharding(mesh, P(None, "data")), NamedSharding(mesh, P())
  epoch_metrics, window = [], []  # per-call metrics of the epoch and of the logging window
  for first in range(step - epoch * epoch_steps, epoch_steps, chunk):
    indices = order[first:first + chunk]
    num_valid = len(indices)
    indices = np.pad(indices, ((0, chunk - num_valid), (0, 0)))
    call_start = time.monotonic()
    state, metrics = steps(state, loop.images, loop.labels,
                           sharding.to_devices(indices, batch_sharding),
                           sharding.to_devices(np.arange(chunk) < num_valid, replicated))
    metrics = {k: v[:num_valid] for k, v in jax.device_get(metrics).items()}
    if first_call:
      logging.info("Compiled and ran the first training call in %.1f s.",
                   time.monotonic() - call_start)
      first_call = False
    bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
    if bad.size:
      loop.mngr.wait_until_finished()  # The last good epoch's save may still be in flight.
      kept = (f", keeping the checkpoints in {loop.mngr.directory} (newest: step "
              f"{loop.mngr.latest_step()})" if loop.mngr.latest_step() is not None
              else " before any checkpoint was written")
      raise UserError(f"the loss became {metrics['loss'][bad[0]]} at step {step + bad[0] + 1} "
                      f"(epoch {epoch + 1}); training stopped{kept}")
    step += num_valid
    epoch_metrics.append(metrics)
    window.append(metrics)
    # Every log_every_steps, and at the epoch's end whatever remains of the window.
    if (step // config.log_every_steps > (step - num_valid) // config.log_every_steps
        or step % epoch_steps == 0):
      means = _means(window)
      loop.writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()},
                                       "train/learning_rate": loop.schedule(step - 1)})
      logging.info("step %d/%d: train loss %.4f, accuracy %.4f%s", step,
                   epoch_steps * config.num_epochs, means["loss"], means["accuracy"],
                   f", L0 term {means['l0']:.4g}, expected MACs kept "
                   f"{means['expected_macs_kept']:.1%}" if config.use_gate else "")
      window = []
    loop.progress(step, num_valid * config.batch_size)
    stop.stop_if_received(loop.mngr, step)
  return state, step, epoch_metrics


def end_epoch(loop: Loop, state: TrainState, epoch: int, step: int,
              epoch_metrics: list[dict[str, np.ndarray]], seconds: float) -> dict[str, float]:
  """The epoch's validation, history record, TensorBoard scalars and checkpoint; its val metrics."""
  config, network, writer = loop.run.config, loop.run.network, loop.writer
  val = loop.evaluate_val(state.params, state.batch_stats)
  record = {"epoch": epoch, "step": step, "epoch_seconds": seconds,
            **{f"train_{k}": v for k, v in _means(epoch_metrics).items()},
            **{f"val_{k}": v for k, v in val.items()}}
  scalars = {f"val/{k}": v for k, v in val.items()}
  gates_line = ""
  if config.use_gate:
    log_alphas = pruning.log_alphas_of(network, state.params, state.batch_stats)
    record["log_alpha"] = {k: v.tolist() for k, v in log_alphas.items()}
    writer.write_histograms(step, {f"log_alpha/{network.graph.gated_layer(k).name}": v
                                   for k, v in log_alphas.items()})  # as --mode=test names it
    costs = accounting.report(network.graph, log_alphas)
    scalars.update({"gates/open": costs["gated_channels_kept"] / costs["gated_channels_full"],
                    "gates/macs_kept": costs["macs_kept_fraction"]})
    gates_line = (f"; gates open {scalars['gates/open']:.1%}, MACs kept "
                  f"{costs['macs_kept_fraction']:.1%}, L0 term {record['train_l0']:.4g}")
  writer.write_scalars(step, scalars)
  writer.flush()  # TensorBoard shows each epoch as it ends.
  if workdirs.is_primary_process():
    workdirs.append_history(loop.workdir, record)
  loop.mngr.save(step, args=ocp.args.StandardSave(versions.saved_fields(state)),
                 metrics={checkpoints.BEST_METRIC: val["accuracy"]})
  logging.info("epoch %d/%d: train accuracy %.4f, val accuracy %.4f (loss %.4f)%s (%.1f s)",
               epoch + 1, config.num_epochs, record["train_accuracy"], val["accuracy"],
               val["loss"], gates_line, record["epoch_seconds"])
  return val


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last validation metrics.

  Everything that can be refused (the config, the data, the workdir's saved
  network, init_from, damaged checkpoints) is checked before the first write
  to `workdir`.
  """
  run = setup(config, workdir)
  workdir = epath.Path(workdir)
  ds, network, mesh = run.dataset, run.network, run.mesh
  state = start_or_resume(run, workdir)
  step_fn = bound_step(run)
  epoch_steps = run.epoch_steps
  mngr = checkpoints.manager(str(workdir), keep=config.keep_checkpoints)
  if workdirs.is_primary_process():
    workdirs.save_config(str(workdir), config)

  budget = run.budget
  step = int(state.step)
  loop = Loop(
      run, workdir, budget, make_train_steps(functools.partial(step_fn, kept=(
          pruning.computed_channels(network, state, config.compact_training)
          if run.plan.fixed_from_start else None)), mesh, config.seed),
      None,
      sharding.replicate(ds.train_images, mesh), sharding.replicate(ds.train_labels, mesh),
      evaluator.Evaluator(network, ds.val_images, ds.val_labels, config.eval_batch_size, mesh),
      writers.MetricWriter(str(workdir), enabled=workdirs.is_primary_process()),
      writers.Progress(epoch_steps * config.num_epochs, epoch_steps, step), mngr,
      jax.jit(run.schedule),  # one program, not one per op
      batches.steps_per_call(config.steps_per_call, epoch_steps))
  start_epoch = step // epoch_steps
  if workdirs.is_primary_process():
    workdirs.keep_history_before(workdir, start_epoch)
  if step == 0:
    loop.writer.write_hparams({k: v for k, v in config.items() if not isinstance(v, (tuple, list))})
  logging.info("Training: %d epochs of %d steps of %d images, from step %d; compiling the "
               "training step.", config.num_epochs, epoch_steps, config.batch_size, step)
  val = {}
  with cli.StopSignals() as stop:
    for epoch in range(start_epoch, config.num_epochs):
      if budget and epoch == budget.settle_epoch:  # at the epoch's start: resumed runs too
        state = sharding.replicate(state._replace(params=pruning.settle_gates(
            network, budget, state.params, state.batch_stats, config.droprate_init,
            config.log_alpha_bound)), mesh)
      if budget and epoch >= budget.settle_epoch and loop.settled_steps is None:
        kept = pruning.computed_channels(network, state, config.compact_training)
        loop = loop._replace(settled_steps=make_train_steps(
            functools.partial(step_fn, settled=True, kept=kept), mesh, config.seed))
      epoch_start = time.monotonic()
      loop.progress.start_epoch()  # validation and the checkpoint are no training time
      state, step, epoch_metrics = train_epoch(loop, stop, state, epoch, step,
                                               first_call=epoch == start_epoch)
      val = end_epoch(loop, state, epoch, step, epoch_metrics, time.monotonic() - epoch_start)
      stop.stop_if_received(mngr, step)
  mngr.wait_until_finished()
  loop.writer.close()
  return val
