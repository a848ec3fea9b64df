"""The channel graph of an NNX module, read from the jaxpr of its forward pass (SPEC section 9).

`trace_graph(net, images)` traces `net(images, train=False)` once, the
module's variables being the program's inputs, and follows the channel axis
of every value through the equations:

- a convolution (XLA's; a 1x1 one written as a dot; a stride-1 one as im2col,
  shifted zero-padded copies concatenated and multiplied by the kernel's
  [k*k*Ci, Co]) and a dense layer on [batch, channels] make a `graphs.Layer`
  (its kernel's module is its path);
- per-channel operations on a layer's outputs that read that module's
  `bias`, the variables of an `nnx.BatchNorm`, `max` with 0, or a
  `gates.LogAlpha` are its bias, BN, ReLU and gate, in that order (a gate,
  being >= 0, may come before the ReLU);
- a max-pool (pads with -inf, strided slices, maxima, a reshape and a max, or
  `reduce_window_max`) is a `graphs.Pool`, a sum over the image divided by
  its size the global average pool; a sum of two activations is an `Add`
  (a `max` with 0 after it its ReLU); a strided slice padded with zero
  channels is a `Pad`; a concatenation on channels gives a node several inputs;
- nested programs (`jit`, `custom_jvp_call`, the forward of `custom_vjp_call`,
  `remat`) are read inside.

Whatever the graph cannot state stops the trace with one `GraphError` naming
the operation and the source line it came from: another operation on
activations, a per-channel operand that is none of the above, a layer's
output read before its gate, a grouped (depthwise) convolution, a dense layer
on a flattened map. Nodes are named for their modules' paths ("blocks/0/
branch1/conv"), gates for their `L0Gate`s ("blocks/0/gates/1"), pools, adds
and shortcuts by kind and number. The graph is checked against the module
(`Graph.check`) and its spatial sizes against the traced shapes.

This file holds the entry points and `_Tracer`, whose parts live by concern:
the values followed (`trace_values`), the jaxpr read as a dataflow
(`trace_flow`), nodes and the Graph (`trace_nodes`), layers (`trace_layers`),
per-channel stages and adds (`trace_stages`), pools and shape operations
(`trace_pools`), and refusals with their source lines (`trace_errors`).
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx

from l0jax import graphs
from l0jax.errors import GraphError
from l0jax.trace_flow import _Flow
from l0jax.trace_layers import _Layers
from l0jax.trace_nodes import _Nodes
from l0jax.trace_pools import _Pools
from l0jax.trace_stages import _Stages
from l0jax.trace_values import _Act, _Const, _Run, _Seg, _View

Apply = Callable[[nnx.Module, jax.Array], jax.Array]


class _Tracer(_Flow, _Nodes, _Stages, _Layers, _Pools):
  """Reads one jaxpr into graph nodes; see the module docstring."""

  def __init__(self, module: nnx.Module, kinds: dict[graphs.Path, type]):
    self.module, self.kinds = module, kinds
    self.nodes: dict[str, graphs.Node] = {}
    self.post: dict[str, list[str]] = {}  # the operations applied to each node's output
    self.hw: dict[str, int] = {}  # each node's traced output side
    self.bn_used: dict[str, set[str]] = {}
    self.gates: list[graphs.Gate] = []
    self.reads: list[tuple[str, int, str]] = []
    self.pooled: dict[Any, str] = {}
    self.counts: dict[str, int] = {}


def _variables(state: nnx.State) -> list[tuple[graphs.Path, nnx.Variable]]:
  return [(tuple(path), v) for path, v in nnx.to_flat_state(state)]


def renamed(graph: graphs.Graph, names: Mapping[str, str]) -> graphs.Graph:
  """`graph` with each node and gate named `names[name]` (those not in `names` keep theirs)."""
  new = lambda name: names.get(name, name)

  def rename(node: graphs.Node) -> graphs.Node:
    gate = {}
    if getattr(node, "gate", None):
      gate_names = tuple(map(new, node.gate_names))
      gate = {"gate": gate_names if len(gate_names) > 1 else gate_names[0]}
    return dataclasses.replace(node, name=new(node.name), inputs=tuple(map(new, node.inputs)),
                               **gate)

  return graphs.Graph(graph.input_hw, graph.in_channels, tuple(map(rename, graph.nodes)),
                      tuple(dataclasses.replace(g, name=new(g.name)) for g in graph.gates))


def trace_graph(net: nnx.Module, example_images: Any, apply: Apply | None = None
                ) -> graphs.Graph:
  """The channel graph of `net`, from the program `apply(net, images)` computes.

  `example_images`: an NHWC array (or anything with its `shape` and `dtype`)
  of square images; only its shape and dtype are used. `apply` defaults to
  `net(images, train=False)`, the test-time logits, l0jax's convention.
  Raises `GraphError` naming the operation and its source line where the
  program does something the graph cannot state.
  """
  apply = apply or (lambda module, images: module(images, train=False))
  _, height, width, channels = example_images.shape
  if height != width:
    raise GraphError(f"cannot trace {height}x{width} images: the channel graph's are square")
  graphdef, state = nnx.split(net)
  variables = _variables(state)

  def forward(values, images):
    merged = nnx.merge(graphdef, nnx.from_flat_state(
        [(path, v.replace(x)) for (path, v), x in zip(variables, values)]))
    return apply(merged, images)

  values = [jax.ShapeDtypeStruct(np.shape(v.get_value()), v.get_value().dtype)
            for _, v in variables]
  # A batch of 2: a batch of 1 would be indistinguishable from a unit axis.
  images = jax.ShapeDtypeStruct((2, height, width, channels), example_images.dtype)
  closed = jax.make_jaxpr(forward)(values, images)
  tracer = _Tracer(net, {path: type(v) for path, v in variables})
  args = [_Const(v.shape, tuple((_Run(frozenset({(path, i)}), 0, n),) for i, n in
                                enumerate(v.shape)))
          for (path, _), v in zip(variables, values)]
  view = _View((0,), 1, height)
  args.append(_Act(("N", "H", "W", "C"), (_Seg(graphs.INPUT, 0, channels),), height,
                   (view, view)))
  tracer.post[graphs.INPUT] = []
  outs = tracer.run(closed.jaxpr, closed.consts, args, "the forward pass")
  if len(outs) != 1:
    raise GraphError(f"cannot trace a network with {len(outs)} outputs: the graph's gives logits")
  return tracer.finish(outs[0], channels, height)


def traced_and_named(net: nnx.Module, image_hw: int,
                     names: Callable[[graphs.Graph], Mapping[str, str]]) -> graphs.Graph:
  """A built-in network's channel graph on `image_hw`-square float32 images of its
  `in_channels`, traced, then renamed by `names(graph)` as the network states its graph."""
  graph = trace_graph(net, jax.ShapeDtypeStruct((1, image_hw, image_hw, net.in_channels),
                                                np.float32))
  return renamed(graph, names(graph))
