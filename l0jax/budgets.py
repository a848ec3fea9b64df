"""Pruning to a budget: a Lagrangian on the kept fraction of MACs or parameters.

After CoFiPruning (Xia et al., ACL 2022; Wang et al., EMNLP 2020). With a
target `t` the L0 term of the loss is

  l1 * (c - t) + l2 * (c - t)^2

where `c` is the expected kept fraction of the network's MACs (or
parameters) under the gates' distribution. The network minimises it; the
multipliers `l1`, `l2` maximise it, by gradient ascent with their own Adam:
`l1` grows while the network costs more than `t` and shrinks while it costs
less, and `l2` only grows, stiffening the constraint the longer it is missed.
So no lambda has to be guessed: the multipliers find the pressure that holds
the cost at `t`. With `multiplier_cost='test_time'` they ascend on the gap of
the test-time cost instead, while the gates still descend on the expected
one: bounded gates count each closed channel as 4.7% open in the expected
cost, so the two part. `t` falls linearly from 1 (the whole network) to the
target over the first `target_warmup` share of the steps, so that a trained
network is pruned gradually.

The expected cost is not what the test counts (a channel whose test-time
gate is > 0), and a controller that is still swinging around `t` can stop
anywhere on its swing. So the last epochs, from `fix_gates_after`, settle:
the gates are settled once, greedily by `log_alpha`, to the test-time cost
closest to `t` from below (`settle`), and then fixed, while the weights
train on without gate noise for the network that will be tested.
"""

import dataclasses
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from l0jax import accounting, gates, graphs, run_config
from l0jax.errors import UserError


class Multipliers(NamedTuple):
  l1: jax.Array
  l2: jax.Array


class Lagrangian(NamedTuple):
  """The multipliers and their optimizer state: part of the TrainState, so checkpointed."""

  multipliers: Multipliers
  opt_state: optax.OptState


def lagrangian_term(multipliers: Multipliers, cost: jax.Array, target: jax.Array) -> jax.Array:
  """l1 * (c - t) + l2 * (c - t)^2: 0 at the target, whatever the multipliers."""
  gap = cost - target
  return multipliers.l1 * gap + multipliers.l2 * gap**2


@dataclasses.dataclass(frozen=True)
class Budget:
  """A run's target, when its schedule moves, and how its multipliers learn."""

  kind: str
  target: float
  warmup_steps: int
  settle_epoch: int  # the first epoch trained with the gates settled and fixed
  learning_rate: float
  multiplier_cost: str = run_config.EXPECTED  # whose gap the multipliers ascend on, or TEST_TIME

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, plan: run_config.GatePlan,
                  epoch_steps: int) -> "Budget | None":
    """The budget of a run whose `plan` is BUDGET, at `epoch_steps` training steps an epoch."""
    if plan.gates != run_config.BUDGET:  # A mask meets its target before training.
      return None
    return cls(*plan.target,
               warmup_steps=round(config.target_warmup * config.num_epochs * epoch_steps),
               settle_epoch=plan.settle_epoch,
               learning_rate=config.multiplier_learning_rate,
               multiplier_cost=config.multiplier_cost)

  @property
  def optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.learning_rate)

  def init(self) -> Lagrangian:
    multipliers = Multipliers(jnp.zeros(()), jnp.zeros(()))
    return Lagrangian(multipliers, self.optimizer.init(multipliers))

  def target_at(self, step: jax.Array) -> jax.Array:
    """t: 1 at step 0, the target from `warmup_steps` on, linear in between."""
    progress = jnp.clip(step / max(self.warmup_steps, 1), 0.0, 1.0)
    return 1.0 + (self.target - 1.0) * progress

  def multiplier_cost_of(self, metrics: Mapping[str, jax.Array]) -> jax.Array:
    """The cost `multiplier_cost` names, from a step's `pruning.budget_metrics`."""
    return metrics["cost" if self.multiplier_cost == run_config.EXPECTED
                   else f"test_time_{self.kind}_kept"]

  def ascend(self, lagrangian: Lagrangian, cost: jax.Array, target: jax.Array) -> Lagrangian:
    """One step of gradient *ascent* on the multipliers at cost `c` and target `t`.

    The Lagrangian term's gradient in l1 and l2 is (c - t, (c - t)^2); Adam takes it negated.
    """
    gap = cost - target
    grads = Multipliers(gap, gap**2)
    updates, opt_state = self.optimizer.update(jax.tree.map(jnp.negative, grads),
                                               lagrangian.opt_state, lagrangian.multipliers)
    return Lagrangian(optax.apply_updates(lagrangian.multipliers, updates), opt_state)


# Where `settle` puts a gate it closes: below gates.PRUNE_AT by a margin that
# no float rounding crosses.
CLOSED_LOG_ALPHA = gates.PRUNE_AT - 1.0


def settle(log_alphas: Mapping[str, np.ndarray], kind: str, target: float,
           graph: graphs.Graph) -> dict[str, np.ndarray]:
  """The gates settled for a test-time cost at most `target`, as close to it as greedy gets.

  Channels kept at test time are closed in order of rising log_alpha while
  the cost is above the target, except a gate's last one where closing it
  would disconnect the network (`accounting.connected`): a whole block's
  gates can sink together, and closing them all leaves logits that no image
  changes. Then closed ones are opened (fully, at gates.OPEN_AT), highest
  log_alpha first, wherever one still fits. Kept channels keep their
  log_alpha, and with it their test-time scale. The cost stays above the
  target only where meeting it would disconnect the network.
  """
  log_alphas = {name: np.asarray(la, np.float32) for name, la in log_alphas.items()}
  kept = {name: np.asarray(gates.test_gate(la)) > 0 for name, la in log_alphas.items()}
  was_kept = {name: k.copy() for name, k in kept.items()}

  def counts() -> dict[str, accounting.Kept]:
    return {name: accounting.Kept(int(k.sum()), int(k.any())) for name, k in kept.items()}

  def cost() -> float:
    return accounting.kept_fractions(graph, counts())[kind]

  rising = sorted((float(la[i]), name, i) for name, la in log_alphas.items()
                  for i in range(la.size))
  was_connected = accounting.connected(graph, counts())
  for _, name, i in rising:
    if cost() <= target:
      break
    kept[name][i] = False
    if was_connected and not kept[name].any() and not accounting.connected(graph, counts()):
      kept[name][i] = True
  for _, name, i in reversed(rising):
    if not kept[name][i]:
      kept[name][i] = True
      kept[name][i] = cost() <= target
  return {name: np.where(kept[name] & ~was_kept[name], gates.OPEN_AT,
                         np.where(kept[name], la, np.minimum(la, CLOSED_LOG_ALPHA)))
          .astype(np.float32) for name, la in log_alphas.items()}


# A gate that moved less than this from its start has kept its initial odds of being open
# within a factor of e: training has not chosen for or against it.
STILL = 1.0


def gate_travel(log_alphas: Mapping[str, np.ndarray], droprate_init: float) -> tuple[str, bool]:
  """How far training moved the gates before they settle, as a sentence, and whether it moved
  any of them further than STILL (if not, settling's ranking made the whole choice)."""
  start = gates.initial_log_alpha(droprate_init)
  flat = np.concatenate([np.ravel(la) for la in log_alphas.values()])
  furthest = float(np.max(np.abs(flat - start)))
  said = (f"before settling, log_alpha lay in [{flat.min():.2f}, {flat.max():.2f}] (median "
          f"{np.median(flat):.2f}); every gate started at {start:.2f} and the furthest moved "
          f"{furthest:.2f}")
  if furthest < STILL:
    said += ("; training barely moved the gates, so settling's ranking of nearly equal gates, "
             "not training, chose the channels (give the gates more epochs before they settle: "
             "num_epochs, fix_gates_after)")
  return said, furthest >= STILL


# Settling more than this share from the target changes at once channels that training had not
# chosen to change; such runs retrain worse than those whose controller got to the target first.
OFF_TARGET = 0.1


def settling_off_target(kept_before: float, budget: Budget, closed: int, opened: int,
                        bounded: bool) -> str | None:
  """A warning if the gates settled while the test-time cost `kept_before` was still more than
  OFF_TARGET above the budget's target (the controller had not got there) or below it (it had
  gone past), else None, with the known causes of each."""
  kind, target = budget.kind, budget.target
  said = f"(test-time {kind} kept {kept_before:.4f}, target {target:g})"
  if kept_before > target * (1 + OFF_TARGET):
    unbounded = ("" if bounded else ", and hold the open gates within its reach "
                 "(log_alpha_bound; configs/prune_to_budget.py sets 4.6)")
    return (f"The controller had not brought the network to its target when the gates settled "
            f"{said}, so settling closed {closed} channels at once, which training had not "
            f"chosen to close; give the pruning more epochs before the gates settle (num_epochs, "
            f"fix_gates_after, target_warmup){unbounded}")
  if kept_before < target * (1 - OFF_TARGET):
    expected = ("; the multipliers ascend on the expected cost, which bounded gates hold above "
                "the test-time one (multiplier_cost='test_time' ascends on the test-time cost)"
                if bounded and budget.multiplier_cost == run_config.EXPECTED else "")
    return (f"The controller had taken the network past its target when the gates settled "
            f"{said}, so settling opened {opened} channels that training had closed; the "
            f"multipliers learn too fast (multiplier_learning_rate){expected}")
  return None


def channels_changed(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]
                     ) -> tuple[int, int]:
  """How many channels kept at test time under the gates `before` are not `after` (closed),
  and the other way (opened)."""
  kept = [{k: np.asarray(gates.test_gate(np.asarray(v, np.float32))) > 0 for k, v in las.items()}
          for las in (before, after)]
  changed = lambda a, b: sum(int(np.sum(kept[a][k] & ~kept[b][k])) for k in kept[0])
  return changed(0, 1), changed(1, 0)


def lowest_kept_fractions(graph: graphs.Graph) -> dict[str, float]:
  """The smallest kept fractions any gate state reaches: every gate closed."""
  return accounting.kept_fractions(graph, accounting.all_closed(graph))


def check_reachable(target: run_config.Target, graph: graphs.Graph) -> None:
  """Refuses a target below what the network keeps with every gate closed."""
  kind, fraction = target
  lowest = lowest_kept_fractions(graph)[kind]
  if fraction < lowest:
    raise UserError(f"config: target_{kind}={fraction:g} is below what this network can reach: "
                    f"with every gate closed its ungated layers still keep {lowest:.4f} of its "
                    f"{'MACs' if kind == 'macs' else 'parameters'}")
