"""L0 gates for an unmodified NNX CNN: `gate_network(net, example_images, rngs=...)`.

The channel graph is traced from the network's program (`tracing`). Every
layer whose output channels no residual add ties to others (`coupling`),
save the one that gives the logits, gets an `L0Gate` of its own: the module
that ends the layer, its `nnx.BatchNorm` (or its conv where no BN follows),
is replaced in the network by a `GatedOutput` that multiplies what it returns
by the layer's gates. Gates are >= 0, so a gate before the ReLU is the gate
after it that the graph states.

Why module surgery, not a wrapper that evaluates the traced program with
the gates put in: the network's own code still runs, one multiply more per
gated layer, in training too (BN's batch statistics and their updates, its
own jit and custom VJPs), where a traced program is of one mode and without
them. Tied channels (a ResNet's stage widths) are not gated yet.

`GatedNetwork` is called as l0jax's networks are, `(images, train=...,
gate_key=...)`: for the length of one call, it hands each gate a key of its
own drawn from `gate_key` (training gates, one per example and channel), or
none (the test-time gates). Call it inside `nnx.jit` or with its state split
and merged, as training does: NNX refuses the handing over otherwise.
"""

from typing import Any, Callable

import jax
from flax import nnx

from l0jax import coupling, gates, tracing
from l0jax import graph as graph_lib

Apply = Callable[[nnx.Module, jax.Array, bool], jax.Array]


class GatedOutput(nnx.Module):
  """A module whose outputs' channels are multiplied by L0 gates."""

  def __init__(self, module: nnx.Module, channels: int, droprate_init: float, *,
               rngs: nnx.Rngs):
    self.module = module
    self.gate = gates.L0Gate(channels, droprate_init, rngs=rngs)
    self.key = None  # `GatedNetwork` sets it for one call: training gates; None: test-time

  def __call__(self, *args, **kwargs) -> jax.Array:
    y = self.module(*args, **kwargs)
    log_alpha = self.gate.log_alpha[...]
    z = (gates.test_gate(log_alpha)[None] if self.key is None
         else gates.sample_gate(self.key, log_alpha, y.shape[0]))
    return y * z.reshape(z.shape[0], *(1,) * (y.ndim - 2), -1).astype(y.dtype)


class GatedNetwork(nnx.Module):
  """A network with `GatedOutput`s put in, called as `(images, train=..., gate_key=...)`."""

  def __init__(self, net: nnx.Module, apply: Apply):
    self.net, self.apply = net, apply

  def __call__(self, images: jax.Array, *, train: bool,
               gate_key: jax.Array | None = None) -> jax.Array:
    outputs = [m for _, m in nnx.iter_graph(self.net) if isinstance(m, GatedOutput)]
    keys = (jax.random.split(gate_key, len(outputs)) if gate_key is not None
            else [None] * len(outputs))
    for output, key in zip(outputs, keys):
      output.key = key
    try:
      return self.apply(self.net, images, train)
    finally:
      for output in outputs:
        output.key = None


def _call(net: nnx.Module, images: jax.Array, train: bool) -> jax.Array:
  return net(images, train=train)


def gate_network(net: nnx.Module, example_images: Any, *, rngs: nnx.Rngs,
                 droprate_init: float = 0.5, apply: Apply = _call) -> GatedNetwork:
  """`net`, changed in place, with an L0 gate on every layer whose channels are its own.

  `apply(net, images, train)` computes the logits (default: `net(images,
  train=train)`); `example_images` give the images' shape and dtype.
  `trace_graph(gated, example_images)` is the gated network's graph.
  """
  graph = tracing.trace_graph(net, example_images, lambda m, x: apply(m, x, False))
  if graph.gates:
    raise graph_lib.GraphError(f"the network has gates already ({graph.gates[0].name}); "
                               "gate_network gates a network without them")
  free = {g.members[0][0] for g in coupling.channel_groups(graph) if len(g.members) == 1}
  for layer in graph.layers:
    if layer.name in free and layer.name != graph.nodes[-1].name:
      path = layer.bn or layer.path
      parent, key = graph_lib.at(net, path[:-1]), path[-1]
      output = GatedOutput(graph_lib.at(net, path), layer.c_out, droprate_init, rngs=rngs)
      if isinstance(key, int):
        parent[key] = output
      else:
        setattr(parent, key, output)
  return GatedNetwork(net, apply)
