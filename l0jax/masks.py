"""One-shot channel masks at a MACs budget: the simple methods L0 pruning is compared with.

`l1_norm` is L1-norm filter pruning (Li, Kadav, Durdanovic, Samet & Graf,
*Pruning Filters for Efficient ConvNets*, ICLR 2017): every gated output
channel is scored by the L1 norm of the filter that makes it, and channels
are kept from the highest score down while the network's MACs stay within the
budget (of MACs, or of parameters). The ranking is global and the norms raw,
so a layer of small filters (a first conv: 27 weights a filter) ranks below
the others whatever its filters do. `l1_norm_relative` divides each norm by
the mean norm of its layer's filters first (Torch-Pruning's
`MagnitudeImportance(normalizer="mean")`), so that a layer is pruned by how
its filters compare with each other, not by its filter size or weight scale.
`random` keeps channels in a random order the same way: the floor any
pruning method must beat. A channel that would overshoot the budget is
passed over for cheaper ones further down the order, so both land just under
it; neither leaves the network disconnected (`keep_in_order`).

Two masks are made from another run's decided gates (`kept_by`) instead, at
whatever they cost: `decided` keeps the channels that run kept, on other
weights (the baseline's: its choice of channels without its noisy training),
and `random_widths` keeps as many channels in each gate, chosen at random
(its allocation of widths alone; Liu et al., *Rethinking the Value of
Network Pruning*, ICLR 2019). Costs depend only on the kept counts, so the
two cost the same.

A mask is a set of gate values: `log_alpha` of `KEPT` (test-time gate 1) or
`PRUNED` (test-time gate 0). Training with `train_gates=False` keeps them
fixed, as when retraining the network an L0 run pruned.
"""

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from l0jax import accounting, checkpoints, gates, graphs, run_config, workdirs
from l0jax.errors import UserError

BY_BUDGET = ("l1_norm", "l1_norm_relative", "random")  # kept while they fit a target
FROM_RUN = run_config.MASKS_FROM_RUN  # decided, random_widths: from mask_from's gates
METHODS = BY_BUDGET + FROM_RUN
# Far enough past +-ln(11) that the test-time gate is exactly 1 or 0.
KEPT, PRUNED = 10.0, -10.0


def keep_in_order(graph: graphs.Graph, order: Sequence[tuple[str, int]], kind: str,
                  budget: float) -> dict[str, np.ndarray]:
  """Which channels to keep, taking `order`'s (gate name, channel) pairs while they fit.

  `kind` is what the budget is a kept fraction of: "macs" or "params".
  Returns a boolean array per gate name. The cost of a channel depends on the
  others (the first channel of a branch also brings its reduce conv back), so
  each candidate is counted with the ones kept before it.

  The kept network stays connected (`accounting.connected`): where the order
  would pass over every channel across a cut (raw filter norms rank a VGG's
  first layer, 27 weights a filter, below all others), the best-placed channel
  of each gate needed to reconnect it is taken first, and the order fills the
  rest of the budget. The cost exceeds the budget only where those channels
  alone do.
  """
  order = list(order)
  best_placed = {}
  for name, channel in order:
    best_placed.setdefault(name, channel)
  reconnecting: list[tuple[str, int]] = []
  while True:
    kept = _take(graph, reconnecting, [c for c in order if c not in reconnecting], kind, budget)
    if accounting.connected(graph, _counts(kept)):
      return kept
    # Every gate left empty reconnects the network; drop those it does without, worst-placed first.
    empty = [name for name in best_placed if not kept[name].any()]
    for name in empty:
      kept[name][best_placed[name]] = True
    for name in reversed(empty):
      kept[name][best_placed[name]] = False
      if not accounting.connected(graph, _counts(kept)):
        kept[name][best_placed[name]] = True
        reconnecting.append((name, best_placed[name]))


def _counts(kept: dict[str, np.ndarray]) -> dict[str, accounting.Kept]:
  return {name: accounting.Kept(int(k.sum()), int(k.any())) for name, k in kept.items()}


def _take(graph: graphs.Graph, first: Sequence[tuple[str, int]],
          then: Sequence[tuple[str, int]], kind: str, budget: float) -> dict[str, np.ndarray]:
  """Every channel of `first`, then `then`'s in turn while they fit the budget."""
  kept = {g.name: np.zeros(g.size, bool) for g in graph.gates}
  for name, channel in first:
    kept[name][channel] = True
  for name, channel in then:
    kept[name][channel] = True
    kept[name][channel] = accounting.kept_fractions(graph, _counts(kept))[kind] <= budget
  return kept


def filter_l1_norms(params: nnx.State, graph: graphs.Graph) -> dict[str, np.ndarray]:
  """The L1 norm of the filters behind each gated output channel, by gate name.

  `params` is the network's `nnx.Param` state; a gate's channels are made by
  the layers it gates (`graphs.Graph.members`): a coupled group's channel by a
  filter of each member, whose norms add up (DepGraph's group norm).
  """
  norms = {}
  for g in graph.gates:
    norms[g.name] = 0
    for layer, start, stop in graph.members(g.name):
      weights = params
      for key in layer.path:
        weights = weights[key]
      kernel = np.asarray(weights["kernel"][...])  # [k, k, c_in, c_out] or [c_in, c_out]
      norms[g.name] = norms[g.name] + np.abs(kernel[..., start:stop]).reshape(
          -1, stop - start).sum(axis=0)
  return norms


def mask_log_alphas(method: str, params: nnx.State, graph: graphs.Graph, kind: str,
                    budget: float, *, key: jax.Array) -> dict[str, np.ndarray]:
  """Gate values (`KEPT` or `PRUNED`) of a `method` mask at `budget` of the `kind` cost.

  `key` draws the `random` order; the L1-norm methods ignore it and break ties
  by network order.
  """
  if method not in BY_BUDGET:
    raise ValueError(f"unknown mask method {method!r}; choose one of {', '.join(BY_BUDGET)}")
  norms = filter_l1_norms(params, graph)
  channels = [(name, j) for name, n in norms.items() for j in range(n.size)]
  if method == "random":
    order = np.asarray(jax.random.permutation(key, len(channels)))
  else:
    if method == "l1_norm_relative":
      # A layer whose filters are all zero has nothing to compare them by: they tie at 0.
      norms = {name: n / max(n.mean(), np.finfo(np.float32).tiny) for name, n in norms.items()}
    order = np.argsort(-np.concatenate(list(norms.values())), kind="stable")
  kept = keep_in_order(graph, [channels[i] for i in order], kind, budget)
  return {name: np.where(k, KEPT, PRUNED).astype(np.float32) for name, k in kept.items()}


def kept_by(workdir: str, graph: graphs.Graph) -> dict[str, np.ndarray]:
  """Which channels the gated run in `workdir` keeps at test time at its last checkpoint, by
  gate name (from its history, which records every epoch's gates)."""
  _, step = checkpoints.chosen_step(workdir, "last")
  record = next((h for h in workdirs.load_history(workdir) if h["step"] == step), {})
  log_alphas = record.get("log_alpha", {})
  shapes = {name: np.shape(la) for name, la in log_alphas.items()}
  if shapes != {g.name: (g.size,) for g in graph.gates}:
    raise UserError(f"mask_from={workdir}: its last checkpoint (step {step}) holds no gates of "
                    "this network (another network, or no gates)")
  return {name: np.asarray(gates.test_gate(np.asarray(la, np.float32))) > 0
          for name, la in log_alphas.items()}


def from_run_log_alphas(method: str, kept: dict[str, np.ndarray], *,
                        key: jax.Array) -> dict[str, np.ndarray]:
  """Gate values of a `decided` or `random_widths` mask of `kept` (`kept_by`'s); `key` draws
  the random channels, gate by gate."""
  if method == "random_widths":
    keys = dict(zip(kept, jax.random.split(key, len(kept))))
    kept = {name: np.isin(np.arange(k.size),
                          np.asarray(jax.random.permutation(keys[name], k.size))[:k.sum()])
            for name, k in kept.items()}
  elif method != "decided":
    raise ValueError(f"unknown mask from a run {method!r}; choose one of {', '.join(FROM_RUN)}")
  return {name: np.where(k, KEPT, PRUNED).astype(np.float32) for name, k in kept.items()}
