"""L0 gates for an unmodified NNX CNN: `gate_network(net, example_images, rngs=...)`.

The channel graph is traced from the network's program (`tracing`). Every
layer whose output channels no residual add ties to others (`coupling`),
save the one that gives the logits, gets an `L0Gate` of its own: the module
that ends the layer, its `nnx.BatchNorm` (or its conv where no BN follows),
is replaced in the network by a `GatedOutput` that multiplies what it returns
by the layer's gates. Gates are >= 0, so a gate before the ReLU is the gate
after it that the graph states.

With `gate_residual=True`, each coupled group (a ResNet's stage widths: the
stem's and the block outputs' channels that the adds sum) gets one `L0Gate`
too, held by `GatedNetwork.groups`, which the `GatedOutput` of every member
shares: a member whose outputs run through several groups (a block of a
wider stage) multiplies them by the gates of each, in order. A group that
holds the input's channels or the logits stays ungated, and with it every
group that shares a layer with it (a layer is gated whole or not at all).

Why module surgery, not a wrapper that evaluates the traced program with
the gates put in: the network's own code still runs, one multiply more per
gated layer, in training too (BN's batch statistics and their updates, its
own jit and custom VJPs), where a traced program is of one mode and without
them. Why one `L0Gate` shared by a group's members: it is one variable, so
one log_alpha trains, is penalised and counted once, and is the graph's one
`Gate`; and each call draws one training gate per gate, not per member, so
every member multiplies a channel by the same value, and a residual add of
gated inputs is their sum gated (z a + z b = z (a + b)), as the export folds it.

`GatedNetwork` is called as l0jax's networks are, `(images, train=...,
gate_key=...)`: for the length of one call, it hands each gate a key of its
own drawn from `gate_key` (training gates, one per example and channel), or
none (the test-time gates). Call it inside `nnx.jit` or with its state split
and merged, as training does: NNX refuses the handing over otherwise.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from l0jax import coupling, gates, graphs, tracing

Apply = Callable[[nnx.Module, jax.Array, bool], jax.Array]


class GatedOutput(nnx.Module):
  """A module whose outputs' channels are multiplied by L0 gates: runs of channels, one per
  gate, in order."""

  def __init__(self, module: nnx.Module, gates_: Sequence[gates.L0Gate]):
    self.module = module
    self.gates = nnx.List(gates_)
    self.keys = None  # `GatedNetwork` sets one per gate for one call: training gates; None: test

  def __call__(self, *args, **kwargs) -> jax.Array:
    y = self.module(*args, **kwargs)
    keys = self.keys or (None,) * len(self.gates)
    return gates.scale_channels(y, jnp.concatenate(
        [gates.gate_values(g.log_alpha[...], key, y.shape[0])
         for g, key in zip(self.gates, keys)], axis=-1))


class GatedNetwork(nnx.Module):
  """A network with `GatedOutput`s put in, called as `(images, train=..., gate_key=...)`;
  `groups` holds the gates that coupled groups' members share."""

  def __init__(self, net: nnx.Module, apply: Apply, groups: Sequence[gates.L0Gate] = ()):
    self.net, self.apply = net, apply
    self.groups = nnx.List(groups)

  def __call__(self, images: jax.Array, *, train: bool,
               gate_key: jax.Array | None = None) -> jax.Array:
    outputs = [m for _, m in nnx.iter_graph(self.net) if isinstance(m, GatedOutput)]
    every = list({id(g): g for output in outputs for g in output.gates}.values())
    if gate_key is not None:  # One key per gate: a shared gate draws the same values everywhere.
      key_of = dict(zip(map(id, every), jax.random.split(gate_key, len(every))))
      for output in outputs:
        output.keys = tuple(key_of[id(g)] for g in output.gates)
    try:
      return self.apply(self.net, images, train)
    finally:
      for output in outputs:
        output.keys = None


def _call(net: nnx.Module, images: jax.Array, train: bool) -> jax.Array:
  return net(images, train=train)


def _gated_groups(graph: graphs.Graph, gate_residual: bool) -> list[coupling.ChannelGroup]:
  """The channel groups to gate: a layer's own channels, and with `gate_residual` the coupled
  groups; none that holds the input's channels or the logits, nor any that shares a layer with
  a group left ungated."""
  widths = {l.name: l.c_out for l in graph.layers}
  # A layer's own channels are those no add reads: a channel added to a shortcut's zeros is a
  # group of one, yet tied by an add.
  groups = [g for g in coupling.channel_groups(graph)
            if (gate_residual or not {m for m, _, _ in g.members} & graph.whole_layers)
            and not {graphs.INPUT, graph.nodes[-1].name} & {m for m, _, _ in g.members}]
  while True:
    covered = {}
    for g in groups:
      for name, start, stop in g.members:
        covered[name] = covered.get(name, 0) + stop - start
    whole = {name for name, n in covered.items() if n == widths[name]}
    kept = [g for g in groups if all(m in whole for m, _, _ in g.members)]
    if len(kept) == len(groups):
      return groups
    groups = kept


def gate_network(net: nnx.Module, example_images: Any, *, rngs: nnx.Rngs,
                 droprate_init: float = 0.5, apply: Apply = _call,
                 gate_residual: bool = False) -> GatedNetwork:
  """`net`, changed in place, with an L0 gate on every layer whose channels are its own, and
  with `gate_residual` one on each coupled group of channels, shared by its members.

  `apply(net, images, train)` computes the logits (default: `net(images,
  train=train)`); `example_images` give the images' shape and dtype.
  `trace_graph(gated, example_images)` is the gated network's graph.
  """
  graph = tracing.trace_graph(net, example_images, lambda m, x: apply(m, x, False))
  if graph.gates:
    raise graphs.GraphError(f"the network has gates already ({graph.gates[0].name}); "
                            "gate_network gates a network without them")
  runs: dict[str, list[tuple[int, gates.L0Gate]]] = {}  # by layer: (first channel, gate)
  shared = []
  for group in _gated_groups(graph, gate_residual):
    gate = gates.L0Gate(group.size, droprate_init, rngs=rngs)
    if len(group.members) > 1:
      shared.append(gate)
    for name, start, _ in group.members:
      runs.setdefault(name, []).append((start, gate))
  for layer in graph.layers:
    if layer.name in runs:
      path = layer.bn or layer.path
      parent, key = graphs.submodule_at(net, path[:-1]), path[-1]
      output = GatedOutput(graphs.submodule_at(net, path), [g for _, g in sorted(
          runs[layer.name], key=lambda run: run[0])])
      if isinstance(key, int):
        parent[key] = output
      else:
        setattr(parent, key, output)
  return GatedNetwork(net, apply, shared)
