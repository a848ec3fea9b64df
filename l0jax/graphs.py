"""The channel graph: what the cost accounting, the penalties and the export know of a network.

A network's graph is traced from its program (`tracing.trace_graph`) or
stated by hand (`googlenet.GoogleNet.stated_channel_graph` is one);
everything that counts, penalises or compacts channels reads the graph and
nothing else of the architecture. A graph is a tuple of nodes in the order
the network computes them; the last one gives the logits. Each node names the
nodes it reads in `inputs`; several names are concatenated on channels, in
that order. `INPUT` is the image.

- `Layer`: a conv (`kernel` x `kernel`, `stride`, `padding`) or, with
  `dense=True`, a dense layer on a [batch, channels] input; then optional
  BatchNorm (eval mode) and ReLU. `path` says where the module holds the
  `nnx.Conv` / `nnx.Linear` (attribute names and list indices), `bn` its
  `nnx.BatchNorm`, if any. `gate` names the `Gate` that controls its output
  channels, or None.
- `Pool`: max-pool (`window`, `stride`, `padding` on every side, or "SAME"
  as `lax.reduce_window` pads) or, with
  `kind="mean"`, the global average pool that gives [batch, channels].
- `Add`: the elementwise sum of its inputs (a residual add), then ReLU if `relu`.
- `Pad`: an identity shortcut that changes shape (He et al.'s option A):
  `x[:, ::stride, ::stride]` with `before` and `after` zero channels added.
- `Gate`: the `gates.LogAlpha` variable at `path` in the module, `size`
  channels. A gate multiplies its layers' outputs after BN and ReLU, before
  anything reads them (`gates.gate_channels`), so it is a non-negative
  per-channel scale that max/mean pools and ReLU commute with, and that the
  export folds into the layers that read it.

Channels tied by residual adds are gated together or not at all: a gate
may gate several layers only where an `Add` ties their channels one to one
(channel j of each is the gate's channel j; a coupled group, `coupling`), and
every input of an `Add` carries, channel by channel, the same gate's same
channel, or none; a `Pad`'s zero channels tie nothing. A layer whose output
runs through several groups (a ResNet block's output in a wider stage) names
their gates in order, `gate=("a", "b")`, each gate a run of its channels. A
layer whose ungated outputs reach an `Add` or a `Pad` is always counted whole.
`channel_segments` derives each node's channels, as runs, and checks the ties.

An ungated layer that only gated layers read is counted as removed when all
of their gates are closed (a GoogleNet's 1x1 reduce conv whose branch is
closed): the export drops it too.

Spatial sizes are derived from `input_hw` and each node's stride and padding,
never stated. A graph that contradicts itself (a name read before it is
produced, a channel count that disagrees, a gate that does not fit its
layer) raises `GraphError` naming the node, when it is built; `check` holds a
graph against the module's arrays. Example, a two-conv chain::

    Graph(input_hw=32, in_channels=3, gates=(Gate("conv1", 16, ("gate", "log_alpha")),),
          nodes=(Layer("conv1", (INPUT,), 3, 16, kernel=3, gate="conv1",
                       path=("conv1", "conv"), bn=("conv1", "bn")),
                 Pool("pool", ("conv1",), window=2, stride=2, padding=0),
                 Layer("conv2", ("pool",), 16, 32, kernel=3, path=("conv2",)),
                 Pool("avg", ("conv2",), kind="mean"),
                 Layer("head", ("avg",), 32, 10, dense=True, relu=False, path=("head",))))
"""

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from l0jax import channel_segments, gates
from l0jax.channel_segments import Segment
from l0jax.errors import GraphError

INPUT = "input"  # the name that reads the network's input images
Path = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class Layer:
  """A conv, or a dense layer; its BN and ReLU; and the gate on its output channels."""

  name: str
  inputs: tuple[str, ...]
  c_in: int
  c_out: int
  kernel: int = 1
  stride: int = 1
  padding: str | int = "SAME"  # as `nnx.Conv` takes it: "SAME", or the same pad on every side
  dense: bool = False
  gate: str | tuple[str, ...] | None = None
  relu: bool = True
  path: Path = ()
  bn: Path | None = None
  bias: bool = True

  @property
  def gate_names(self) -> tuple[str, ...]:
    """The gates of its output channels, in the order of the runs they gate; () if ungated."""
    if self.gate is None:
      return ()
    return (self.gate,) if isinstance(self.gate, str) else tuple(self.gate)

  @property
  def per_output(self) -> int:
    """Parameters besides the weights per output channel: the bias, BN's scale and shift."""
    return int(self.bias) + (2 if self.bn is not None else 0)


@dataclasses.dataclass(frozen=True)
class Pool:
  """A max-pool, or (kind="mean") the global average pool that ends a conv stack."""

  name: str
  inputs: tuple[str, ...]
  kind: str = "max"
  window: int = 3
  stride: int = 1
  padding: int | str = 1  # on every side, with -inf; or "SAME" (rounds the size up)


@dataclasses.dataclass(frozen=True)
class Add:
  """A residual add of inputs with the same shape and gates, then ReLU if `relu`."""

  name: str
  inputs: tuple[str, ...]
  relu: bool = True


@dataclasses.dataclass(frozen=True)
class Pad:
  """Option A's shortcut: every `stride`-th pixel, zero channels `before` and `after`."""

  name: str
  inputs: tuple[str, ...]
  stride: int = 1
  before: int = 0
  after: int = 0


@dataclasses.dataclass(frozen=True)
class Gate:
  """A `gates.LogAlpha` of `size` channels, at `path` in the module."""

  name: str
  size: int
  path: Path


Node = Layer | Pool | Add | Pad



class _Shape(NamedTuple):
  hw: int
  segments: tuple[Segment, ...]

  @property
  def channels(self) -> int:
    return sum(s.channels for s in self.segments)


def _conv_hw(hw: int, kernel: int, stride: int, padding: str | int) -> int:
  if padding == "SAME":
    return -(-hw // stride)
  return (hw + 2 * padding - kernel) // stride + 1


@dataclasses.dataclass(frozen=True)
class Graph:
  """A network's channel structure; see the module docstring."""

  input_hw: int
  in_channels: int
  nodes: tuple[Node, ...]
  gates: tuple[Gate, ...] = ()

  def __post_init__(self):
    self._shapes  # pylint: disable=pointless-statement  # Validates now, not at first use.

  @functools.cached_property
  def _shapes(self) -> dict[str, _Shape]:
    """Every node's output size and channel segments, checked as they are derived."""
    if not self.nodes:
      raise GraphError("the channel graph has no nodes")
    gate_sizes = {g.name: g.size for g in self.gates}
    if len(gate_sizes) != len(self.gates):
      raise GraphError("the channel graph names a gate twice")
    shapes = {INPUT: _Shape(self.input_hw, (Segment((INPUT,), None, self.in_channels),))}
    tied: dict[str, list[set[str]]] = {}  # by gate: its layers, in sets an add ties
    for node in self.nodes:
      if node.name in shapes:
        raise GraphError(f"{node.name}: a second node of that name")
      if not node.inputs:
        raise GraphError(f"{node.name}: reads nothing")
      for name in node.inputs:
        if name not in shapes:
          raise GraphError(f"{node.name}: reads {name!r}, which no earlier node produces")
      read = [shapes[name] for name in node.inputs]
      hw = read[0].hw
      if any(r.hw != hw for r in read) and not isinstance(node, Add):
        raise GraphError(f"{node.name}: concatenates inputs of different spatial sizes "
                         f"{[r.hw for r in read]}")
      segments = tuple(s for r in read for s in r.segments)
      channels = sum(r.channels for r in read)
      if isinstance(node, Layer):
        if channels != node.c_in:
          raise GraphError(f"{node.name}: reads {channels} channels from {list(node.inputs)}, "
                           f"but states c_in={node.c_in}")
        if node.dense and hw != 1:
          raise GraphError(f"{node.name}: a dense layer reads {hw}x{hw} images; pool them first")
        for gate in node.gate_names:
          tied.setdefault(gate, []).append({node.name})
        hw = 1 if node.dense else _conv_hw(hw, node.kernel, node.stride, node.padding)
        shapes[node.name] = _Shape(hw, channel_segments.layer_segments(
            node.name, node.gate_names, node.c_out, gate_sizes))
        continue
      if isinstance(node, Add):
        if len({(r.hw, r.channels) for r in read}) != 1:
          raise GraphError(f"{node.name}: adds inputs of different shapes "
                           f"{[(r.hw, r.hw, r.channels) for r in read]}")
        shapes[node.name] = _Shape(
            hw, channel_segments.add_segments(node.name, [r.segments for r in read]))
        for s in shapes[node.name].segments:
          if s.gate is not None:
            tied[s.gate] = channel_segments.tie(tied[s.gate], set(s.producers))
      elif isinstance(node, Pad):
        shapes[node.name] = _Shape(-(-hw // node.stride), channel_segments.pad_segments(
            segments, node.before, node.after))
      elif node.kind == "mean":
        shapes[node.name] = _Shape(1, segments)
      elif node.kind == "max":
        shapes[node.name] = _Shape(_conv_hw(hw, node.window, node.stride, node.padding),
                                   segments)
      else:
        raise GraphError(f"{node.name}: unknown pool kind {node.kind!r}; 'max' or 'mean'")
    if unused := set(gate_sizes) - set(tied):
      raise GraphError(f"gate(s) {sorted(unused)} gate no layer of the graph")
    for gate, layers in tied.items():
      if len(layers) > 1:
        first, second = (min(t, key=self._order) for t in layers[:2])
        raise GraphError(f"{second}: its gate {gate!r} already gates {first}, and no residual "
                         "add ties their channels: layers share a gate only as a coupled group")
    return shapes

  def _order(self, name: str) -> int:
    return next(i for i, n in enumerate(self.nodes) if n.name == name)

  @property
  def layers(self) -> tuple[Layer, ...]:
    """The conv and dense layers, in network order: the rows of the cost report."""
    return tuple(n for n in self.nodes if isinstance(n, Layer))

  def out_hw(self, name: str) -> int:
    """The spatial size of a node's output (1 for dense layers and the global pool)."""
    return self._shapes[name].hw

  def segments(self, name: str) -> tuple[Segment, ...]:
    """What a node's output channels are made of, in order."""
    return self._shapes[name].segments

  def input_segments(self, node: Node) -> tuple[Segment, ...]:
    """What a node reads: its inputs' segments, concatenated."""
    return tuple(s for name in node.inputs for s in self._shapes[name].segments)

  @functools.cached_property
  def readers(self) -> dict[str, tuple[Layer, ...]]:
    """The layers that read each layer's (or the input's) channels, through pools and adds."""
    readers = {name: [] for name in (INPUT, *(l.name for l in self.layers))}
    for layer in self.layers:
      for s in self.input_segments(layer):
        for p in s.producers:
          if layer not in readers[p]:
            readers[p].append(layer)
    return {name: tuple(r) for name, r in readers.items()}

  @functools.cached_property
  def whole_layers(self) -> frozenset[str]:
    """Layers always counted whole: their ungated channels tied by an Add or Pad, or read by
    the output."""
    whole = {p for s in self.segments(self.nodes[-1].name) for p in s.producers}
    for node in self.nodes:
      if isinstance(node, (Add, Pad)):
        whole.update(p for s in self.input_segments(node) if s.gate is None
                     for p in s.producers)
    return frozenset(whole)

  def members(self, gate: str) -> tuple[tuple[Layer, int, int], ...]:
    """The layers whose output channels `gate` controls, each with its run of them [start,
    stop): one layer, or the members of a coupled group."""
    found = []
    for layer in self.layers:
      start = 0
      for s in self.segments(layer.name):
        if s.gate == gate:
          found.append((layer, start, start + s.channels))
        start += s.channels
    return tuple(found)

  def gated_layer(self, gate: str) -> Layer:
    """The first layer whose output channels `gate` controls (what the gate is shown as)."""
    return self.members(gate)[0][0]

  def log_alphas(self, module: nnx.Module) -> dict[str, jax.Array]:
    """Every gate's log_alpha in `module`, by gate name, in the graph's order."""
    return {g.name: submodule_at(module, g.path).get_value() for g in self.gates}

  def set_log_alphas(self, module: nnx.Module, log_alphas: Mapping[str, Any]) -> None:
    """Replaces the log_alpha of each gate named in `log_alphas`, in place."""
    for g in self.gates:
      if g.name in log_alphas:
        submodule_at(module, g.path).set_value(jnp.asarray(log_alphas[g.name], jnp.float32))

  def check(self, module: nnx.Module) -> None:
    """Raises GraphError unless `module`'s arrays are where and what the graph says."""
    for layer in self.layers:
      try:
        weights = submodule_at(module, layer.path)
        bn = None if layer.bn is None else submodule_at(module, layer.bn)
      except (AttributeError, IndexError, KeyError, TypeError) as e:
        raise GraphError(f"{layer.name}: the module has nothing at its path ({e})") from e
      want = ((layer.c_in, layer.c_out) if layer.dense
              else (layer.kernel, layer.kernel, layer.c_in, layer.c_out))
      kernel = getattr(weights, "kernel", None)
      if kernel is None or tuple(kernel.shape) != want:
        raise GraphError(f"{layer.name}: the module's kernel at {_show(layer.path)} has shape "
                         f"{None if kernel is None else tuple(kernel.shape)}, the graph says "
                         f"{want}")
      if (getattr(weights, "bias", None) is not None) != layer.bias:
        raise GraphError(f"{layer.name}: bias={layer.bias} in the graph, not in the module")
      if bn is not None and tuple(bn.scale.shape) != (layer.c_out,):
        raise GraphError(f"{layer.name}: its BatchNorm at {_show(layer.bn)} has "
                         f"{bn.scale.shape[0]} channels, the layer c_out={layer.c_out}")
    found = {path for path, v in nnx.iter_graph(module) if isinstance(v, gates.LogAlpha)}
    for g in self.gates:
      if g.path not in found:
        raise GraphError(f"gate {g.name}: no gates.LogAlpha at {_show(g.path)} in the module")
      if (shape := tuple(submodule_at(module, g.path).shape)) != (g.size,):
        raise GraphError(f"gate {g.name}: the module's log_alpha has shape {shape}, "
                         f"the graph says ({g.size},)")
    if extra := found - {g.path for g in self.gates}:
      raise GraphError(f"the module has gates the graph does not list: "
                       f"{', '.join(sorted(_show(p) for p in extra))}")


def _show(path: Path) -> str:
  return "/".join(map(str, path))


def submodule_at(module: Any, path: Sequence[str | int]) -> Any:
  """What `module` holds at `path`: attribute names and list indices."""
  for key in path:
    module = module[key] if isinstance(key, int) else getattr(module, key)
  return module
