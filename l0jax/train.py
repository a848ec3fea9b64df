"""Training: a pure step function over pytrees, and the loop that drives it.

The whole dataset sits on the devices as uint8. A compiled call runs
`steps_per_call` training steps in a `lax.scan`, gathering each batch by index,
augmenting and normalising it on the device. Everything random is derived from
(seed, step) or (seed, epoch), so a run resumed from a checkpoint continues
exactly as if it had never stopped. Each epoch ends with the validation split's
accuracy (l0jax/evaluator.py), a history record and a checkpoint
(l0jax/workdirs.py).
"""

import functools
import signal
import threading
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
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from l0jax import accounting, budget as budget_lib, data, evaluator, gates, masks, networks
from l0jax import graph as graph_lib
from l0jax import workdirs, writers
from l0jax import config as config_lib
from l0jax.errors import Stopped, UserError


class TrainState(NamedTuple):
  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState
  # The multipliers of a run pruned to a budget; None otherwise (and in
  # checkpoints written before budgets existed).
  lagrangian: budget_lib.Lagrangian | None = None


class Network(NamedTuple):
  """What the step functions need to know about the network, besides its arrays."""

  graphdef: nnx.GraphDef
  graph: graph_lib.Graph
  image_shape: tuple[int, int, int]
  num_classes: int
  dtype: Any
  # The training split's per-channel pixel mean and std, that every input is normalised by.
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def apply(self, params: nnx.State, batch_stats: nnx.State, images: jax.Array, *, train: bool,
            gate_key: jax.Array | None = None) -> tuple[jax.Array, nnx.State, nnx.Module]:
    """Logits, the updated BN statistics and the module, as a pure function of the arrays."""
    # copy=True: fresh Variables at this trace level, so BN may update them under grad.
    net = nnx.merge(self.graphdef, params, batch_stats, copy=True)
    logits = net(images, train=train, gate_key=gate_key)
    return logits, nnx.state(net, nnx.BatchStat), net


def run_once(fn: Callable, *args) -> Any:
  """`jax.jit(fn)(*args)`, compiled at XLA's backend optimisation level 1.

  For programs that run once, such as initialisation: XLA's optimisations
  cost more compile time on its hundreds of random draws than they save in
  one run, and level 1 gives the same bits (tests/test_train.py).
  """
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 1})(*args)


def describe_network(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
                     num_classes: int, mean: np.ndarray,
                     std: np.ndarray) -> tuple[Network, nnx.Module]:
  """The network's static description, and its module of shapes only (no arrays drawn).

  `mean` and `std` are the per-channel statistics its inputs are normalised by.
  """
  graph, abstract = networks.channel_graph(config, image_shape, num_classes)
  graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  network = Network(graphdef, graph, tuple(image_shape), num_classes,
                    networks.compute_dtype(config.compute_dtype), tuple(map(float, mean)),
                    tuple(map(float, std)))
  return network, abstract


def create_network(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
                   num_classes: int, mean: np.ndarray,
                   std: np.ndarray) -> tuple[Network, nnx.State, nnx.State]:
  """The network's static description (`describe_network`) and its initial (params,
  batch_stats).

  Initialisation runs as one compiled program (`run_once`): op by op, each of its hundreds of
  operations would be compiled and dispatched on its own.
  """
  network, _ = describe_network(config, image_shape, num_classes, mean, std)
  params, batch_stats = run_once(
      lambda seed: nnx.split(networks.build(config, image_shape, num_classes,
                                            jax.random.fold_in(jax.random.key(seed), 0)),
                             nnx.Param, nnx.BatchStat)[1:],
      np.uint32(config.seed))  # Unsigned: a seed may take all 32 bits (config.validate).
  return network, params, batch_stats


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  return optax.piecewise_constant_schedule(
      config.learning_rate,
      {int(m) * steps_per_epoch: config.lr_factor for m in config.lr_milestones})


def _map_with_gates(fn: Callable, params: nnx.State, *others) -> Any:
  """`fn(is_gate, x, *others' x)` on each array of `params`, and of trees shaped like it."""
  gate_paths = gates.gate_paths(params)
  return jax.tree_util.tree_map_with_path(lambda path, *x: fn(path in gate_paths, *x), params,
                                          *others)


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW with the multi-step schedule; the gates' log_alpha are not weight-decayed, and learn
  at `gate_lr_scale` times the weights' rate (Adam's step is proportional to it)."""
  not_a_gate = lambda params: _map_with_gates(lambda gate, _: not gate, params)
  tx = optax.adamw(learning_rate_schedule(config, steps_per_epoch),
                   weight_decay=config.weight_decay, mask=not_a_gate)
  if config.gate_lr_scale == 1:
    return tx  # the optimizer state and the program of runs made before the scale existed
  is_gate = lambda params: _map_with_gates(lambda gate, _: gate, params)
  return optax.chain(tx, optax.masked(optax.scale(config.gate_lr_scale), is_gate))


def fix_gates(params: nnx.State) -> nnx.State:
  """`params` with no gradient through the gates: their AdamW updates are then exactly 0."""
  return _map_with_gates(lambda gate, x: jax.lax.stop_gradient(x) if gate else x, params)


def keep_gates(params: nnx.State, old: nnx.State) -> nnx.State:
  """`params` with the gates' log_alpha of `old`."""
  return _map_with_gates(lambda gate, x, o: o if gate else x, params, old)


def gate_metrics(network: Network, net: nnx.Module, penalty: str,
                 fixed: bool = False) -> dict[str, jax.Array]:
  """The L0 term and the gate statistics worth watching; zeros without gates.

  The expected costs are over the gates training draws: with the gates `fixed` at their
  test-time values, what those keep, not the hard-concrete expectation of their log_alpha.
  """
  if not network.graph.gates:
    return {"l0": jnp.zeros(()), "open_gates": jnp.ones(()),
            "expected_params_kept": jnp.ones(()), "expected_macs_kept": jnp.ones(())}
  log_alphas = network.graph.log_alphas(net)
  flat = jnp.concatenate(list(log_alphas.values()))
  l0 = accounting.penalties(log_alphas, network.graph)
  kept = (accounting.kept_fractions(network.graph, accounting.test_time_kept(log_alphas))
          if fixed else l0)
  return {
      "l0": l0[penalty],
      "open_gates": jnp.mean(gates.test_gate(flat) > 0),
      "expected_params_kept": kept["params"],
      "expected_macs_kept": kept["macs"],
  }


def budget_metrics(budget: budget_lib.Budget, network: Network, net: nnx.Module,
                   metrics: dict[str, jax.Array], step: jax.Array,
                   multipliers: budget_lib.Multipliers, settled: bool) -> dict[str, jax.Array]:
  """The Lagrangian as the L0 term, and what it is made of: t, c, l1, l2; the test-time cost.

  Once the gates are settled, c is the test-time cost: the one they were fixed for.
  """
  # Once settled, gate_metrics' expected cost is already the test-time one: not counted twice.
  cost = metrics[f"expected_{budget.kind}_kept"]
  test_time = cost if settled else accounting.kept_fractions(
      network.graph, accounting.test_time_kept(network.graph.log_alphas(net)))[budget.kind]
  target = budget.target_at(step)
  return {"l0": budget_lib.lagrangian_term(multipliers, cost, target), "target": target,
          "cost": cost, f"test_time_{budget.kind}_kept": test_time, "l1": multipliers.l1,
          "l2": multipliers.l2}


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array, *,
               network: Network, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict,
               budget: budget_lib.Budget | None = None,
               settled: bool = False) -> tuple[TrainState, dict]:
  """One AdamW step on cross-entropy + lambda_l0 * L0 term, for a uint8 batch.

  With a `budget` the L0 term is its Lagrangian instead, and its multipliers
  take one step of gradient ascent on the same loss. With `train_gates=False`,
  or a budget's gates `settled`, the gates act with their test-time values and
  only the cross-entropy is minimised, over the weights alone.
  """
  aug_key, gate_key = jax.random.split(key)
  # Augmented in float32 and rounded to the compute dtype once.
  images = data.normalize(images, network.mean, network.std)
  images = data.augment(aug_key, images).astype(network.dtype)
  gates_fixed = settled or not config.train_gates
  if gates_fixed:
    gate_key = None  # The test-time gates.

  def loss_fn(params, batch_stats, multipliers):
    if gates_fixed:
      params = fix_gates(params)
    logits, batch_stats, net = network.apply(params, batch_stats, images, train=True,
                                             gate_key=gate_key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    metrics = gate_metrics(network, net, config.penalty, fixed=gates_fixed)
    if budget:
      metrics.update(budget_metrics(budget, network, net, metrics, state.step, multipliers,
                                    settled))
      loss = ce if settled else ce + metrics["l0"]
    else:
      loss = ce + config.lambda_l0 * metrics["l0"] if config.train_gates else ce
    metrics.update(loss=loss, cross_entropy=ce, accuracy=jnp.mean(logits.argmax(-1) == labels))
    return loss, (batch_stats, metrics)

  if budget and not settled:
    (grads, multiplier_grads), (batch_stats, metrics) = jax.grad(
        loss_fn, argnums=(0, 2), has_aux=True)(state.params, state.batch_stats,
                                               state.lagrangian.multipliers)
    lagrangian = budget.ascend(state.lagrangian, multiplier_grads)
  else:
    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, state.lagrangian and state.lagrangian.multipliers)
    lagrangian = state.lagrangian
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if settled:
    # Adam's momentum would move the gates without a gradient: they stay as settled.
    params = keep_gates(params, state.params)
  return TrainState(state.step + 1, params, batch_stats, opt_state, lagrangian), metrics


def make_train_steps(network: Network, tx: optax.GradientTransformation,
                     config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                     budget: budget_lib.Budget | None = None, settled: bool = False) -> Callable:
  """A compiled `(state, images, labels, indices[n, B], valid[n]) -> (state, per-step metrics)`.

  Every call has the same number of steps, so it compiles once; the last call
  of an epoch marks the steps it does not need as not `valid`, and drops their
  results. They are computed all the same: a `lax.cond` around the step makes
  XLA copy the whole state every step, and on a GPU wait for the predicate on
  the host. `steps_per_call` keeps them to at most one per call; their
  metrics are 0.
  """
  step_fn = functools.partial(train_step, network=network, tx=tx, config=config, budget=budget,
                              settled=settled)
  train_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  batch_sharding = NamedSharding(mesh, P("data"))

  def one_step(state, indices, images, labels):
    batch = jax.lax.with_sharding_constraint(images[indices], batch_sharding)
    key = jax.random.fold_in(train_key, state.step)
    return step_fn(state, batch, labels[indices], key)

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


def steps_per_call(config: ml_collections.ConfigDict, epoch_steps: int) -> int:
  """Training steps per compiled call: at most `config.steps_per_call`, in equal calls an epoch.

  `steps_per_call=0` picks 1 on CPU, where XLA runs the training steps
  slower inside a loop than outside one (results/throughput_cpu),
  and 100 on accelerators, where fewer host round-trips pay. Calls of equal
  size leave at most one padded step per call (see `make_train_steps`).
  """
  n = config.steps_per_call or (1 if jax.default_backend() == "cpu" else 100)
  return -(-epoch_steps // -(-epoch_steps // n))


def epoch_order(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The training examples of one epoch, as [steps_per_epoch, batch_size] indices."""
  steps = num_examples // batch_size
  order = np.random.default_rng((seed, epoch)).permutation(num_examples)
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def data_mesh() -> jax.sharding.Mesh:
  """All devices on one 'data' axis; XLA's sharding propagation does the rest."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


class Run(NamedTuple):
  """A run's config, data, initial network and device mesh, shared by training and testing."""

  config: ml_collections.ConfigDict
  dataset: data.Dataset
  network: Network
  params: nnx.State
  batch_stats: nnx.State
  mesh: Any


def setup(config: ml_collections.ConfigDict) -> Run:
  """The data and the initial network, each announced on the console as it is ready."""
  config_lib.validate(config)
  if config.batch_size % jax.device_count():
    raise UserError(f"batch_size={config.batch_size} does not divide over "
                    f"{jax.device_count()} devices")
  start = time.monotonic()
  dataset = data.load_dataset(config)
  if budget_lib.target_of(config):  # Refused before anything is announced, as other bad input.
    budget_lib.check_reachable(config, networks.channel_graph(
        config, dataset.train_images.shape[1:], dataset.num_classes)[0])
  sizes = [f"{len(x):,}" for x in (dataset.train_images, dataset.val_images, dataset.test_images)]
  logging.info("Data: %s from %s: %s training, %s validation, %s test images of %s (%.1f s).",
               dataset.name, dataset.source, *sizes,
               "x".join(map(str, dataset.train_images.shape[1:])), time.monotonic() - start)
  start = time.monotonic()
  network, params, batch_stats = create_network(config, dataset.train_images.shape[1:],
                                                dataset.num_classes, dataset.mean, dataset.std)
  num_params, macs = accounting.totals(accounting.count(network.graph, None))
  logging.info("Network: %s at width %g, %s, %s parameters, %.2f M MACs per image, "
               "%s on %d %s device(s) (%.1f s).", config_lib.network_name(config),
               config.width_multiplier,
               "gated" if config.use_gate else "no gates", f"{num_params:,}", macs / 1e6,
               jnp.dtype(network.dtype).name, jax.device_count(), jax.default_backend(),
               time.monotonic() - start)
  return Run(config, dataset, network, params, batch_stats, data_mesh())


def _replicate(tree, mesh):
  """`tree` whole on every device of `mesh`, through host memory: a device_put of arrays on one
  process's devices onto several processes' devices made broken arrays (jax 0.10.2)."""
  return jax.tree.map(lambda a: data.put(a, NamedSharding(mesh, P())), jax.device_get(tree))


def steps_per_epoch(run: Run) -> int:
  steps = len(run.dataset.train_images) // run.config.batch_size
  if steps == 0:
    raise UserError(f"batch_size={run.config.batch_size} is larger than the training split "
                    f"({len(run.dataset.train_images)} examples)")
  return steps


def run_budget(run: Run) -> budget_lib.Budget | None:
  return budget_lib.Budget.from_config(run.config, steps_per_epoch(run))


def with_log_alphas(run: Run, state: TrainState, log_alphas: dict[str, np.ndarray]) -> TrainState:
  """`state` with each gate's log_alpha replaced, by the names the channel graph gives them."""
  net = nnx.merge(run.network.graphdef, state.params, state.batch_stats)
  run.network.graph.set_log_alphas(net, log_alphas)
  return state._replace(params=nnx.state(net, nnx.Param))


def log_alphas_of(run: Run, state: TrainState) -> dict[str, np.ndarray]:
  net = nnx.merge(run.network.graphdef, state.params, state.batch_stats)
  return {k: np.asarray(v) for k, v in run.network.graph.log_alphas(net).items()}


def settle_gates(run: Run, budget: budget_lib.Budget, state: TrainState) -> TrainState:
  """`state` with its gates decided for the budget at test time (budget.settle), and says how."""
  before = log_alphas_of(run, state)
  after = budget_lib.settle(before, budget.kind, budget.target, run.network.graph)
  kept = {when: {k: np.asarray(gates.test_gate(v)) > 0 for k, v in las.items()}
          for when, las in (("before", before), ("after", after))}
  cost = {when: accounting.kept_fractions(run.network.graph,
                                          accounting.deterministic_kept(las))[budget.kind]
          for when, las in (("before", before), ("after", after))}
  changed = lambda a, b: sum(int(np.sum(kept[a][k] & ~kept[b][k])) for k in before)
  logging.info("Gates settled for the budget: test-time %s kept %.4f -> %.4f (target %g); "
               "%d channels closed, %d opened; from now on they are fixed.", budget.kind,
               cost["before"], cost["after"], budget.target, changed("before", "after"),
               changed("after", "before"))
  travel, moved = budget_lib.gate_travel(before, run.config.droprate_init)
  (logging.info if moved else logging.warning)("%s.", travel[0].upper() + travel[1:])
  if cost["after"] > budget.target:
    logging.warning("The settled gates keep %.4f of the %s, above the target %g: closing more "
                    "would disconnect the network.", cost["after"], budget.kind, budget.target)
  return with_log_alphas(run, state, after)


def mask_gates(run: Run, state: TrainState) -> TrainState:
  """`state` with the gates of the one-shot `config.mask` of its (loaded) weights, and says so."""
  config, graph = run.config, run.network.graph
  key = jax.random.fold_in(jax.random.key(config.seed), 2)
  if config.mask in masks.FROM_RUN:
    log_alphas = masks.from_run_log_alphas(config.mask, masks.kept_by(config.mask_from, graph),
                                           key=key)
    (kind, target), source = ("macs", None), f"the gates of {config.mask_from}"
  else:
    kind, target = budget_lib.target_of(config)
    log_alphas = masks.mask_log_alphas(config.mask, state.params, graph, kind, target, key=key)
    source = f"target {target:g}"
  cost = accounting.kept_fractions(graph, accounting.deterministic_kept(log_alphas))[kind]
  logging.info("Mask %s: %d of %d gated channels kept, %.4f of the %s (%s); fixed.",
               config.mask, sum(int(np.sum(la == masks.KEPT)) for la in log_alphas.values()),
               sum(la.size for la in log_alphas.values()), cost, kind, source)
  if target is not None and cost > target:
    logging.warning("The %s mask keeps %.4f of the %s, above the target %g: fewer channels "
                    "would disconnect the network.", config.mask, cost, kind, target)
  return with_log_alphas(run, state, log_alphas)


def initial_state(run: Run) -> tuple[optax.GradientTransformation, TrainState]:
  """The optimizer and the step-0 state, replicated over the run's mesh.

  Replicated so that a checkpoint restored into it lands on the devices that
  evaluate it (Orbax restores into the target's shardings).
  """
  tx = create_optimizer(run.config, steps_per_epoch(run))
  budget = run_budget(run)
  state = run_once(lambda params, batch_stats: TrainState(
      jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params),
      budget.init() if budget else None), run.params, run.batch_stats)
  return tx, _replicate(state, run.mesh)


def _means(calls: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Each metric's mean over the steps of `calls` (per-call arrays of per-step values)."""
  return {k: float(np.concatenate([m[k] for m in calls]).mean()) for k in calls[0]}


class StopSignals:
  """SIGTERM or SIGINT while training: stop at the next step or epoch end, its save complete.

  Unhandled, either ends the process at once, and a checkpoint still being
  written (saves are asynchronous) is lost with the epoch it holds. Handled in
  the main thread only, where Python runs signal handlers; a second signal
  acts as if this were not there (SIGINT raises KeyboardInterrupt, SIGTERM
  kills). Not in a run of several processes: each would stop at the step its
  own signal came, and the others would wait at the next collective forever.
  """

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc_info) -> None:
    self._restore()

  def _restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:  # pylint: disable=unused-argument
    self.received = signum
    self._restore()
    logging.warning("Signal %d: stopping after the current training call, once the newest "
                    "checkpoint is written (the same signal again stops at once).", signum)

  def stop_if_received(self, mngr: ocp.CheckpointManager, step: int) -> None:
    """Raises `Stopped` if a signal came, once every save in flight is complete."""
    if self.received is None:
      return
    mngr.wait_until_finished()
    latest = mngr.latest_step()
    kept = (f"it resumes from its newest checkpoint, step {latest}," if latest is not None
            else "no checkpoint had been written: it starts afresh")
    raise Stopped(f"signal {self.received} stopped the run at step {step}; {kept} when the same "
                  "command is run again", self.received)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last validation metrics.

  Everything that can be refused (the config, the data, the workdir's saved
  network, init_from, damaged checkpoints) is checked before the first write
  to `workdir`.
  """
  workdirs.check_same_network(workdir, config)
  workdirs.check_history_has_checkpoints(workdir)
  if config.init_from and not workdirs.has_checkpoints(workdir):
    workdirs.init_source(config.init_from, config)  # Before the data and network are built.
  run = setup(config)
  workdir = epath.Path(workdir)
  ds, network, mesh = run.dataset, run.network, run.mesh
  tx, state = initial_state(run)
  epoch_steps = steps_per_epoch(run)
  num_steps = epoch_steps * config.num_epochs
  schedule = jax.jit(learning_rate_schedule(config, epoch_steps))  # One program, not one per op.

  restored = workdirs.restore_latest(str(workdir), state)
  if restored is not None:
    latest, state = restored
    logging.info("Resuming %s from step %d.", workdir, latest)
  elif config.init_from:
    params, batch_stats = workdirs.load_weights(config.init_from, config, state.params,
                                                   state.batch_stats)
    state = state._replace(params=params, batch_stats=batch_stats)
    if config.mask:
      state = mask_gates(run, state)
    state = _replicate(state._replace(opt_state=tx.init(state.params)), mesh)
    logging.info("Network weights from the %s checkpoint of %s; %s.", config.init_checkpoint,
                 config.init_from, f"gates start at droprate_init={config.droprate_init:g}"
                 if config.train_gates else "its gates kept, fixed"
                 if config_lib.gates_from_init(config) else f"gates from the {config.mask} mask")
  mngr = workdirs.manager(str(workdir), keep=config.keep_checkpoints)
  if workdirs.is_primary_process():
    workdirs.save_config(str(workdir), config)

  budget = run_budget(run)
  train_steps = make_train_steps(network, tx, config, mesh, budget)
  if budget:
    settled_steps = make_train_steps(network, tx, config, mesh, budget, settled=True)
  images = _replicate(ds.train_images, mesh)
  labels = _replicate(ds.train_labels, mesh)
  evaluate_val = evaluator.Evaluator(network, ds.val_images, ds.val_labels, config.eval_batch_size,
                                     mesh)
  writer = writers.MetricWriter(str(workdir), enabled=workdirs.is_primary_process())
  step = int(state.step)
  progress = writers.Progress(num_steps, epoch_steps, step)
  start_epoch = step // epoch_steps
  if workdirs.is_primary_process():
    workdirs.keep_history_before(workdir, start_epoch)
  if step == 0:
    writer.write_hparams({k: v for k, v in config.items() if not isinstance(v, (tuple, list))})
  logging.info("Training: %d epochs of %d steps of %d images, from step %d; compiling the "
               "training step.", config.num_epochs, epoch_steps, config.batch_size, step)

  val = {}
  batch_sharding, replicated = NamedSharding(mesh, P(None, "data")), NamedSharding(mesh, P())
  chunk = steps_per_call(config, epoch_steps)
  first_call = True
  with StopSignals() as stop:
    for epoch in range(start_epoch, config.num_epochs):
      if budget and epoch == budget.settle_epoch:  # at the epoch's start: resumed runs too
        state = _replicate(settle_gates(run, budget, state), mesh)
      steps = settled_steps if budget and epoch >= budget.settle_epoch else train_steps
      order = epoch_order(config.seed, epoch, len(ds.train_images), config.batch_size)
      epoch_start = time.monotonic()
      progress.start_epoch()  # validation and the checkpoint are no training time
      epoch_metrics, window = [], []  # per-call metrics of the epoch and of the logging window
      for first in range(step - epoch * epoch_steps, epoch_steps, chunk):
        indices = order[first:first + chunk]
        num_valid = len(indices)
        indices = np.pad(indices, ((0, chunk - num_valid), (0, 0)))
        call_start = time.monotonic()
        state, metrics = steps(state, images, labels, data.put(indices, batch_sharding),
                               data.put(np.arange(chunk) < num_valid, replicated))
        metrics = {k: v[:num_valid] for k, v in jax.device_get(metrics).items()}
        if first_call:
          logging.info("Compiled and ran the first training call in %.1f s.",
                       time.monotonic() - call_start)
          first_call = False
        bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
        if bad.size:
          mngr.wait_until_finished()  # The last good epoch's save may still be in flight.
          kept = (f", keeping the checkpoints in {mngr.directory} (newest: step "
                  f"{mngr.latest_step()})" if mngr.latest_step() is not None
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
          writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()},
                                      "train/learning_rate": schedule(step - 1)})
          logging.info("step %d/%d: train loss %.4f, accuracy %.4f%s", step, num_steps,
                       means["loss"], means["accuracy"],
                       f", L0 term {means['l0']:.4g}, expected MACs kept "
                       f"{means['expected_macs_kept']:.1%}" if config.use_gate else "")
          window = []
        progress(step, num_valid * config.batch_size)
        stop.stop_if_received(mngr, step)
      val = evaluate_val(state.params, state.batch_stats)
      record = {"epoch": epoch, "step": step, "epoch_seconds": time.monotonic() - epoch_start,
                **{f"train_{k}": v for k, v in _means(epoch_metrics).items()},
                **{f"val_{k}": v for k, v in val.items()}}
      scalars = {f"val/{k}": v for k, v in val.items()}
      pruning = ""
      if config.use_gate:
        log_alphas = log_alphas_of(run, state)
        record["log_alpha"] = {k: v.tolist() for k, v in log_alphas.items()}
        writer.write_histograms(step, {f"log_alpha/{network.graph.gated_layer(k).name}": v
                                       for k, v in log_alphas.items()})  # as --mode=test names it
        costs = accounting.report(network.graph, log_alphas)
        scalars.update({"gates/open": costs["gated_channels_kept"] / costs["gated_channels_full"],
                        "gates/macs_kept": costs["macs_kept_fraction"]})
        pruning = (f"; gates open {scalars['gates/open']:.1%}, MACs kept "
                   f"{costs['macs_kept_fraction']:.1%}, L0 term {record['train_l0']:.4g}")
      writer.write_scalars(step, scalars)
      writer.flush()  # TensorBoard shows each epoch as it ends.
      if workdirs.is_primary_process():
        workdirs.append_history(workdir, record)
      mngr.save(step, args=ocp.args.StandardSave(workdirs.on_disk(state)),
                metrics={workdirs.BEST_METRIC: val["accuracy"]})
      logging.info("epoch %d/%d: train accuracy %.4f, val accuracy %.4f (loss %.4f)%s (%.1f s)",
                   epoch + 1, config.num_epochs, record["train_accuracy"], val["accuracy"],
                   val["loss"], pruning, record["epoch_seconds"])
      stop.stop_if_received(mngr, step)
  mngr.wait_until_finished()
  writer.close()
  return val
