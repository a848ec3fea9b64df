"""The gates inside a training run: what the step reports of them, and how they are fixed.

A fixed gate no longer trains: the step functions (`train.train_step`) stop
its gradient (`stop_gate_gradients`) and, where it trained before, put it
back after each update (`restore_gates`). They report `gate_metrics` and
`budget_metrics`; the loop sets the gates once, by name, to a budget's
settled values (`settle_gates`) or a one-shot mask (`mask_gates`). The gates
are found by their type (`gates.gate_paths`), named by the channel graph.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from l0jax import accounting, budgets, gates, kept_channels, masks, run_config
from l0jax.networks import Network


def map_with_gates(fn: Callable, params: nnx.State, *others) -> Any:
  """`fn(is_gate, x, *others' x)` on each array of `params`, and of trees shaped like it."""
  gate_paths = gates.gate_paths(params)
  return jax.tree_util.tree_map_with_path(lambda path, *x: fn(path in gate_paths, *x), params,
                                          *others)


def stop_gate_gradients(params: nnx.State) -> nnx.State:
  """`params` with no gradient through the gates: their AdamW updates are then exactly 0."""
  return map_with_gates(lambda gate, x: jax.lax.stop_gradient(x) if gate else x, params)


def bound_gates(params: nnx.State, bound: float) -> nnx.State:
  """`params` with the gates' log_alpha clipped to [-bound, bound]."""
  return map_with_gates(lambda gate, x: jnp.clip(x, -bound, bound) if gate else x, params)


def restore_gates(params: nnx.State, old: nnx.State) -> nnx.State:
  """`params` with the gates' log_alpha of `old`."""
  return map_with_gates(lambda gate, x, o: o if gate else x, params, old)


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


def budget_metrics(budget: budgets.Budget, network: Network, net: nnx.Module,
                   metrics: dict[str, jax.Array], step: jax.Array,
                   multipliers: budgets.Multipliers, settled: bool) -> dict[str, jax.Array]:
  """The Lagrangian as the L0 term, and what it is made of: t, c, l1, l2; the test-time cost.

  Once the gates are settled, c is the test-time cost: the one they were fixed for.
  """
  # Once settled, gate_metrics' expected cost is already the test-time one: not counted twice.
  cost = metrics[f"expected_{budget.kind}_kept"]
  test_time = cost if settled else accounting.kept_fractions(
      network.graph, accounting.test_time_kept(network.graph.log_alphas(net)))[budget.kind]
  target = budget.target_at(step)
  return {"l0": budgets.lagrangian_term(multipliers, cost, target), "target": target,
          "cost": cost, f"test_time_{budget.kind}_kept": test_time, "l1": multipliers.l1,
          "l2": multipliers.l2}


def log_alphas_of(network: Network, params: nnx.State,
                  batch_stats: nnx.State) -> dict[str, np.ndarray]:
  """Each gate's log_alpha, by the name the channel graph gives it."""
  net = nnx.merge(network.graphdef, params, batch_stats)
  return {k: np.asarray(v) for k, v in network.graph.log_alphas(net).items()}


def with_log_alphas(network: Network, params: nnx.State, batch_stats: nnx.State,
                    log_alphas: dict[str, np.ndarray]) -> nnx.State:
  """`params` with each gate's log_alpha replaced, by the names the channel graph gives them."""
  net = nnx.merge(network.graphdef, params, batch_stats)
  network.graph.set_log_alphas(net, log_alphas)
  return nnx.state(net, nnx.Param)


def settle_gates(network: Network, budget: budgets.Budget, params: nnx.State,
                 batch_stats: nnx.State, droprate_init: float,
                 log_alpha_bound: float) -> nnx.State:
  """`params` with its gates settled for the budget at test time (budgets.settle), and says how."""
  graph = network.graph
  before = log_alphas_of(network, params, batch_stats)
  after = budgets.settle(before, budget.kind, budget.target, graph)
  cost = {when: accounting.kept_fractions(graph, accounting.deterministic_kept(las))[budget.kind]
          for when, las in (("before", before), ("after", after))}
  closed, opened = budgets.channels_changed(before, after)
  logging.info("Gates settled for the budget: test-time %s kept %.4f -> %.4f (target %g); "
               "%d channels closed, %d opened; from now on they are fixed.", budget.kind,
               cost["before"], cost["after"], budget.target, closed, opened)
  travel, moved = budgets.gate_travel(before, droprate_init)
  (logging.info if moved else logging.warning)("%s.", travel[0].upper() + travel[1:])
  off_target = budgets.settling_off_target(cost["before"], budget, closed, opened,
                                           bounded=bool(log_alpha_bound))
  if off_target:
    logging.warning("%s.", off_target)
  if cost["after"] > budget.target:
    logging.warning("The settled gates keep %.4f of the %s, above the target %g: closing more "
                    "would disconnect the network.", cost["after"], budget.kind, budget.target)
  return with_log_alphas(network, params, batch_stats, after)


def mask_gates(network: Network, plan: run_config.GatePlan, seed: int, params: nnx.State,
               batch_stats: nnx.State) -> nnx.State:
  """`params` with the gates of the one-shot mask `plan` makes of these weights, and says so."""
  graph = network.graph
  key = jax.random.fold_in(jax.random.key(seed), 2)
  if plan.mask in masks.FROM_RUN:
    log_alphas = masks.from_run_log_alphas(plan.mask, masks.kept_by(plan.mask_from, graph),
                                           key=key)
    (kind, target), source = ("macs", None), f"the gates of {plan.mask_from}"
  else:
    kind, target = plan.target
    log_alphas = masks.mask_log_alphas(plan.mask, params, graph, kind, target, key=key)
    source = f"target {target:g}"
  cost = accounting.kept_fractions(graph, accounting.deterministic_kept(log_alphas))[kind]
  logging.info("Mask %s: %d of %d gated channels kept, %.4f of the %s (%s); fixed.",
               plan.mask, sum(int(np.sum(la == masks.KEPT)) for la in log_alphas.values()),
               sum(la.size for la in log_alphas.values()), cost, kind, source)
  if target is not None and cost > target:
    logging.warning("The %s mask keeps %.4f of the %s, above the target %g: fewer channels "
                    "would disconnect the network.", plan.mask, cost, kind, target)
  return with_log_alphas(network, params, batch_stats, log_alphas)


def computed_channels(network: Network, state: Any,
                      compact_training: bool) -> kept_channels.KeptChannels | None:
  """The channels a training step computes once the gates of `state` (a `train.TrainState`)
  are fixed: with `compact_training`, the kept ones; else None, all of them."""
  if not (compact_training and network.graph.gates):
    return None
  log_alphas = log_alphas_of(network, state.params, state.batch_stats)
  kept = kept_channels.kept_channels(network.graph, log_alphas)
  costs = accounting.kept_fractions(network.graph, accounting.deterministic_kept(log_alphas))
  logging.info("With the gates fixed, each training step computes the kept channels alone "
               "(%.1f%% of the MACs).", 100 * costs["macs"])
  return kept
