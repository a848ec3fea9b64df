"""Exact parameter and MAC counts of a (gated) network, per layer and in total, from its graph.

The formulas are written once, in `count`, over a `graphs.Graph` and the
number of kept channels of each gate. That number is either an int (a
channel is kept when its test-time gate is > 0; `deterministic_kept`) or its
expectation under the gate distribution (`expected_kept`), a jnp scalar that
differentiates through to log_alpha, so the same counts serve the report
after training and the cost-weighted L0 penalty during it.

A layer reads its producers' kept channels: a gated producer's kept ones, an
ungated producer's all. A gate that a coupled group shares (a ResNet's stage
width) controls the kept outputs of every member layer, the kept inputs of
every layer reading them, through the adds, and so the add's kept channels;
a layer with several gates keeps the sum of theirs. An ungated layer that only gated layers read (a
GoogleNet's 1x1 reduce conv) is counted as removed when all of their gates
are closed (the export drops it too); in expectation, its outputs count with
the probability that any of those gates is open.
"""

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from l0jax import channel_segments, gates, graphs
from l0jax.errors import UserError
from l0jax.run_config import PENALTIES

Count = int | float | jax.Array  # an int when deterministic, a jnp scalar when expected


class Kept(NamedTuple):
  """What survives of one gate's channels."""

  channels: Count  # kept channels (or their expectation)
  alive: Count  # 1 if any channel is kept, else 0 (or the probability of that)


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """One conv (or dense layer): its full shape and what is kept of it."""

  name: str
  kernel: int
  out_hw: int
  c_in: int
  c_out: int
  kept_in: Count
  kept_out: Count
  per_output: int = 3  # parameters besides weights: bias, BN scale and shift

  @property
  def params(self) -> Count:
    return self.kept_in * self.kept_out * self.kernel**2 + self.per_output * self.kept_out

  @property
  def macs(self) -> Count:
    return self.kept_in * self.kept_out * self.kernel**2 * self.out_hw**2


def _any_alive(alive: Sequence[Count]) -> Count:
  """P(any is alive) for independent ones (an exact `or` for 0s and 1s, and for the booleans
  of `test_time_kept`)."""
  def either(a: Count, b: Count) -> Count:
    if jnp.result_type(a) == jnp.result_type(b) == jnp.bool_:
      return a | b
    return a + b - a * b
  return functools.reduce(either, alive)


def count(graph: graphs.Graph, kept: Mapping[str, Kept] | None) -> list[LayerCost]:
  """Every conv and dense layer, in network order. `kept=None` (or a missing gate): all kept."""
  kept = kept or {}
  if unknown := set(kept) - {g.name for g in graph.gates}:
    raise ValueError(f"no gates named {sorted(unknown)} in this network")
  gate_kept = {g.name: kept.get(g.name, Kept(g.size, 1)) for g in graph.gates}

  def used(layer: graphs.Layer) -> Count:
    readers = graph.readers[layer.name]
    if layer.name in graph.whole_layers or not readers or any(not r.gate_names for r in readers):
      return 1
    read_gates = dict.fromkeys(g for r in readers for g in r.gate_names)  # a shared one once
    return _any_alive([gate_kept[g].alive for g in read_gates])

  costs = []
  for layer in graph.layers:
    kept_in = sum(s.channels if s.gate is None else gate_kept[s.gate].channels
                  for s in graph.input_segments(layer))
    kept_out = (sum(gate_kept[g].channels for g in layer.gate_names) if layer.gate_names
                else layer.c_out * used(layer))
    costs.append(LayerCost(layer.name, 1 if layer.dense else layer.kernel,
                           graph.out_hw(layer.name), layer.c_in, layer.c_out, kept_in, kept_out,
                           layer.per_output))
  return costs


@jax.jit  # One program for all gates: op by op, each gate's shape would compile its own.
def test_time_kept(log_alphas: Mapping[str, jax.Array]) -> dict[str, Kept]:
  """Kept channels at test time, those whose test-time gate is > 0, as traceable jnp scalars."""
  kept = {name: jnp.sum(gates.test_gate(la) > 0) for name, la in log_alphas.items()}
  return {name: Kept(n, n > 0) for name, n in kept.items()}


def deterministic_kept(log_alphas: Mapping[str, jax.Array]) -> dict[str, Kept]:
  """`test_time_kept` as ints, for the report after training (needs concrete values)."""
  return {name: Kept(int(k.channels), int(k.alive))
          for name, k in test_time_kept(log_alphas).items()}


def all_closed(graph: graphs.Graph) -> dict[str, Kept]:
  """Every gated channel pruned: what is left is the ungated layers that do not depend on them."""
  return {g.name: Kept(0, 0) for g in graph.gates}


def expected_kept(log_alphas: Mapping[str, jax.Array]) -> dict[str, Kept]:
  """Expected kept channels under the training-time gates (independent), differentiable."""
  p = {name: gates.prob_open(la) for name, la in log_alphas.items()}
  return {name: Kept(jnp.sum(q), 1.0 - jnp.prod(1.0 - q)) for name, q in p.items()}


def connected(graph: graphs.Graph, kept: Mapping[str, Kept]) -> bool:
  """Whether some kept channel still carries the input to the output.

  Closing every gate across a cut of the network (all four branches of a
  GoogleNet block, every gated layer of a plain chain) leaves the layers after
  it only their biases: the logits are then the same for every image, however
  cheap the network counts. A residual add's shortcut is a path of its own, so
  a ResNet with a whole block closed stays connected.
  """
  carries = {graphs.INPUT: True}  # by layer: does its output depend on the input?

  def open_(s: channel_segments.Segment) -> bool:
    return ((s.gate is None or kept[s.gate].channels > 0)
            and any(carries[p] for p in s.producers))

  for layer in graph.layers:
    carries[layer.name] = any(open_(s) for s in graph.input_segments(layer))
  return any(open_(s) for s in graph.segments(graph.nodes[-1].name))


def totals(layers: Sequence[LayerCost]) -> tuple[Count, Count]:
  """(parameters, MACs) of the whole network."""
  return sum(l.params for l in layers), sum(l.macs for l in layers)


def penalties(log_alphas: Mapping[str, jax.Array],
              graph: graphs.Graph) -> dict[str, jax.Array]:
  """Every kind of L0 term (PENALTIES), jnp-traceable, from one expected count of the network.

  mean_gate: mean P(z != 0) over all gated channels (the PyTorch original's R, so its
  lambdas transfer); params / macs: expected kept fraction of the full
  network's parameters / MACs. No gates, no penalty.
  """
  if not log_alphas:
    return {kind: jnp.zeros(()) for kind in PENALTIES}
  return {
      "mean_gate": jnp.mean(jnp.concatenate([gates.prob_open(la) for la in log_alphas.values()])),
      **kept_fractions(graph, expected_kept(log_alphas)),
  }


def kept_fractions(graph: graphs.Graph, kept: Mapping[str, Kept] | None) -> dict[str, Count]:
  """{'params': ..., 'macs': ...}: the kept fractions of the full network's counts."""
  (params, macs), (params_full, macs_full) = totals(count(graph, kept)), totals(count(graph, None))
  return {"params": params / params_full, "macs": macs / macs_full}


def penalty(kind: str, log_alphas: Mapping[str, jax.Array], graph: graphs.Graph) -> jax.Array:
  """The L0 term of the loss of one kind (see `penalties`)."""
  if kind not in PENALTIES:
    raise UserError(f"unknown penalty {kind!r}; choose one of {', '.join(PENALTIES)}")
  return penalties(log_alphas, graph)[kind]


def report(graph: graphs.Graph, log_alphas: Mapping[str, jax.Array]) -> dict[str, Any]:
  """JSON-able full and kept counts of the network after training, per layer and in total."""
  kept = deterministic_kept(log_alphas)
  layers, full = count(graph, kept), count(graph, None)
  (params_kept, macs_kept), (params_full, macs_full) = totals(layers), totals(full)
  return {
      "params_full": params_full,
      "params_kept": params_kept,
      "params_kept_fraction": params_kept / params_full,
      "macs_full": macs_full,
      "macs_kept": macs_kept,
      "macs_kept_fraction": macs_kept / macs_full,
      "flops_full": 2 * macs_full,
      "flops_kept": 2 * macs_kept,
      "gated_channels_full": sum(la.size for la in log_alphas.values()),
      "gated_channels_kept": sum(k.channels for k in kept.values()),
      "connected": connected(graph, kept),
      "layers": [
          dict(name=l.name, kernel=l.kernel, out_hw=l.out_hw, c_in=l.c_in, c_out=l.c_out,
               kept_in=l.kept_in, kept_out=l.kept_out, params=l.params, macs=l.macs,
               params_full=f.params, macs_full=f.macs)
          for l, f in zip(layers, full)
      ],
  }


def format_table(summary: dict[str, Any]) -> str:
  """The report as a per-layer console table, then the totals; without gates, one line: every
  channel of every layer is kept, so a table of kept channels would say nothing."""
  if not summary["gated_channels_full"]:
    return (f"no gates, every channel kept: {summary['params_full']:,} parameters, "
            f"{summary['macs_full']:,} MACs in {len(summary['layers'])} conv and dense layers")
  header = (f"{'layer':<22} {'k':>2} {'hw':>3} {'in kept/full':>13} {'out kept/full':>13} "
            f"{'params':>9} {'of':>9} {'MACs':>12} {'of':>12}")
  rows = [header, "-" * len(header)]
  for l in summary["layers"]:
    rows.append(f"{l['name']:<22} {l['kernel']:>2} {l['out_hw']:>3} "
                f"{l['kept_in']:>6}/{l['c_in']:<6} {l['kept_out']:>6}/{l['c_out']:<6} "
                f"{l['params']:>9,} {l['params_full']:>9,} {l['macs']:>12,} {l['macs_full']:>12,}")
  rows.append("-" * len(header))
  rows.append(f"parameters {summary['params_kept']:,} of {summary['params_full']:,} "
              f"({summary['params_kept_fraction']:.1%} kept); "
              f"MACs {summary['macs_kept']:,} of {summary['macs_full']:,} "
              f"({summary['macs_kept_fraction']:.1%} kept); "
              f"gated channels {summary['gated_channels_kept']:,} of "
              f"{summary['gated_channels_full']:,}")
  if not summary["connected"]:
    rows.append("The closed gates disconnect the network: its logits are the same for every "
                "image.")
  return "\n".join(rows)
