"""The channel graph of an NNX module, read from the jaxpr of its forward pass (SPEC section 9).

`trace_graph(net, images)` traces `net(images, train=False)` once, the
module's variables being the program's inputs, and follows the channel axis
of every value through the equations:

- a convolution (XLA's; a 1x1 one written as a dot; a stride-1 one as im2col,
  shifted zero-padded copies concatenated and multiplied by the kernel's
  [k*k*Ci, Co]) and a dense layer on [batch, channels] make a `graph.Layer`
  (its kernel's module is its path);
- per-channel operations on a layer's outputs that read that module's
  `bias`, the variables of an `nnx.BatchNorm`, `max` with 0, or a
  `gates.LogAlpha` are its bias, BN, ReLU and gate, in that order (a gate,
  being >= 0, may come before the ReLU);
- a max-pool (pads with -inf, strided slices, maxima, a reshape and a max, or
  `reduce_window_max`) is a `graph.Pool`, a sum over the image divided by
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
"""

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax._src import source_info_util  # An equation's user frames; JAX exports no other way.
from jax.extend import core as jax_core

from l0jax import gates
from l0jax import graph as graph_lib
from l0jax.graph import GraphError

Apply = Callable[[nnx.Module, jax.Array], jax.Array]
# What may follow a Layer's conv, in this order; a gate is >= 0, so it and a ReLU commute.
_LAYER_STAGES = {"bias": 0, "bn": 1, "relu": 2, "gate": 2}
_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint")
_PASS = ("convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier")
_ELEMENTWISE = frozenset((
    "add", "sub", "mul", "div", "max", "min", "pow", "integer_pow", "exp", "exp2", "log",
    "log1p", "expm1", "logistic", "neg", "rsqrt", "sqrt", "abs", "sign", "tanh", "erf", "clamp",
    "select_n", "ge", "gt", "le", "lt", "eq", "ne", "and", "or", "not", "square",
    "stop_gradient", *_PASS))
# What `nnx.BatchNorm` computes in eval mode: (x - mean) * (rsqrt(var + eps) * scale) + bias.
_BATCH_NORM = {"sub": {"mean"}, "mul": {"var", "scale"}, "add": {"bias"}}
_FLAX = os.path.dirname(nnx.__file__).rsplit(os.sep, 1)[0]
_VALUES = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
           "max": np.maximum, "min": np.minimum, "neg": np.negative}


@dataclasses.dataclass(frozen=True)
class _Run:
  """Channels [start, stop) of each source (a variable's path and axis) along one axis."""

  sources: frozenset[tuple[graph_lib.Path, int]]
  start: int
  stop: int


@dataclasses.dataclass(frozen=True)
class _Const:
  """A value computed from the module's variables and constants alone, never the images.

  `labels[i]` says what varies along axis i: None if nothing does, else runs of
  sources; `opaque` that it varies in a way not followed; `value` is known
  where it is one number everywhere.
  """

  shape: tuple[int, ...]
  labels: tuple[tuple[_Run, ...] | None, ...]
  opaque: bool = False
  value: float | None = None


@dataclasses.dataclass(frozen=True)
class _Seg:
  """A run of an activation's channels: those of `node` (None: zeros a pad added), after
  `version` of the operations that follow it."""

  node: str | None
  version: int
  channels: int


@dataclasses.dataclass(frozen=True)
class _View:
  """A spatial axis as a window on the grid of the nodes it reads: at j, the max over the
  grid's pixels `offset + stride * j` for each offset."""

  offsets: tuple[int, ...]
  stride: int
  size: int


@dataclasses.dataclass(frozen=True)
class _Act:
  """A value computed from the images. `roles` names each axis: "N", "C", "H", "W", "1"
  (a unit axis), ("H", stride) the inner part of a split spatial axis, "F" a flattened map."""

  roles: tuple[Any, ...]
  segs: tuple[_Seg, ...]
  hw: int  # the side of the grid `views` sample
  views: tuple[_View, _View]  # H, W
  fill: float | None = None  # what padded grid positions hold, if any are padded
  divisor: int = 1  # a sum over pixels, waiting for its division by their number

  @property
  def channels(self) -> int:
    return sum(s.channels for s in self.segs)

  def identity(self) -> bool:
    return all(v == _View((0,), 1, self.hw) for v in self.views)


@dataclasses.dataclass(frozen=True)
class _Patches:
  """An im2col matrix: the channels of `base` at each tap (dy, dx) of a stride-1 window,
  concatenated in `taps`' order, zero where a tap falls off the map; `size` pixels a side."""

  base: _Act
  taps: tuple[tuple[int, int], ...]
  size: int


@dataclasses.dataclass(frozen=True)
class _Compare:
  """`a >= b` (or `>`) of two activations: half of a `where(a >= b, a, b)` maximum."""

  a: _Act
  b: _Act


def _where(eqn, outer: str) -> str:
  """The line of the user's code an equation came from, past JAX's and Flax's own frames."""
  frames = list(source_info_util.user_frames(eqn.source_info.traceback))
  frame = next((f for f in frames if not f.file_name.startswith(_FLAX)), None)
  if frame is None:
    return outer
  return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"


def _refuse(eqn, where: str, why: str):
  what = "the output" if eqn is None else eqn.primitive.name
  raise GraphError(f"cannot trace {what} at {where}: {why}")


def _name(path: graph_lib.Path) -> str:
  return "/".join(map(str, path))


class _Tracer:
  """Reads one jaxpr into graph nodes; see the module docstring."""

  def __init__(self, module: nnx.Module, kinds: dict[graph_lib.Path, type]):
    self.module, self.kinds = module, kinds
    self.nodes: dict[str, graph_lib.Node] = {}
    self.post: dict[str, list[str]] = {}  # the operations applied to each node's output
    self.hw: dict[str, int] = {}  # each node's traced output side
    self.bn_used: dict[str, set[str]] = {}
    self.gates: list[graph_lib.Gate] = []
    self.reads: list[tuple[str, int, str]] = []
    self.pooled: dict[Any, str] = {}
    self.counts: dict[str, int] = {}

  # Values.
  def read(self, env: dict, atom) -> Any:
    if isinstance(atom, jax_core.Literal):
      return self.constant(atom.val)
    return env[atom]

  @staticmethod
  def constant(x) -> _Const:
    try:
      x = np.asarray(x)
    except TypeError:  # A PRNG key, say: nothing the graph reads.
      return _Const(tuple(np.shape(x)), (None,) * len(np.shape(x)), opaque=True)
    same = x.size > 0 and x.dtype != object and bool(np.all(x == x.flat[0]))
    try:
      value = float(x.flat[0]) if same else None  # bfloat16 too, which is no np.number
    except (TypeError, ValueError):
      value = None
    return _Const(x.shape, (None,) * x.ndim, opaque=not same and x.size > 1, value=value)

  def run(self, jaxpr, consts: Sequence[Any], args: Sequence[Any], where: str) -> list[Any]:
    env = {}
    for var, c in zip(jaxpr.constvars, consts):
      env[var] = c if isinstance(c, (_Const, _Act)) else self.constant(c)
    for var, a in zip(jaxpr.invars, args):
      env[var] = a
    for eqn in jaxpr.eqns:
      outs = self.eqn(eqn, [self.read(env, a) for a in eqn.invars], _where(eqn, where))
      for var, out in zip(eqn.outvars, outs):
        if not isinstance(var, jax_core.DropVar):
          env[var] = out
    return [self.read(env, a) for a in jaxpr.outvars]

  def eqn(self, eqn, ins: list[Any], where: str) -> list[Any]:
    name = eqn.primitive.name
    if name in _CALLS:
      inner = next(eqn.params[k] for k in ("call_jaxpr", "jaxpr", "fun_jaxpr") if k in eqn.params)
      if isinstance(inner, jax_core.ClosedJaxpr):
        return self.run(inner.jaxpr, inner.consts, ins, where)
      return self.run(inner, (), ins, where)
    if not any(isinstance(x, (_Act, _Compare, _Patches)) for x in ins):
      if len(eqn.outvars) == 1:
        return [self.const_eqn(eqn, ins)]
      return [_opaque(v.aval) for v in eqn.outvars]
    if name in _PASS:
      return [ins[0]]
    if any(isinstance(x, _Patches) for x in ins) and name != "dot_general":
      _refuse(eqn, where, "shifted copies of a map concatenated, then not multiplied by a "
              "kernel: not an im2col convolution")
    handler = getattr(self, f"act_{name}", None)
    if handler is None:
      _refuse(eqn, where, "an operation on activations that the channel graph cannot state")
    return [handler(eqn, ins, where)]

  # Constants: followed per axis, so that a kernel, a BN scale or a gate can be told apart.
  def const_eqn(self, eqn, ins: list[_Const]) -> _Const:
    name, p = eqn.primitive.name, eqn.params
    shape = tuple(getattr(eqn.outvars[0].aval, "shape", ()))
    if name in _ELEMENTWISE:
      labels, opaque = [], any(c.opaque for c in ins)
      for axis in range(len(shape)):
        found = {c.labels[axis] for c in ins
                 if c.shape and c.shape[axis] == shape[axis] and c.labels[axis] is not None}
        if len(found) > 1:
          merged = _merge_runs(found)
          found, opaque = ({merged}, opaque) if merged else (set(), True)
        labels.append(next(iter(found), None))
      values = [c.value for c in ins]
      value = None
      if name in _PASS:
        value = values[0]
      elif name in _VALUES and None not in values:
        value = float(_VALUES[name](*values))
      return _Const(shape, tuple(labels), opaque, value)
    if not ins:
      return _opaque(eqn.outvars[0].aval)
    c, value = ins[0], ins[0].value
    if name == "broadcast_in_dim":
      labels = [None] * len(shape)
      for old, new in enumerate(p["broadcast_dimensions"]):
        if c.shape[old] == shape[new]:
          labels[new] = c.labels[old]
      return _Const(shape, tuple(labels), c.opaque, value)
    if name in ("reshape", "squeeze"):
      kept = [l for n, l in zip(c.shape, c.labels) if n != 1]
      if [n for n in c.shape if n != 1] == [n for n in shape if n != 1]:
        it = iter(kept)
        return _Const(shape, tuple(None if n == 1 else next(it) for n in shape), c.opaque, value)
      if merged := _merged_leading_axes(c, shape):
        return merged
    if name == "transpose":
      return _Const(shape, tuple(c.labels[i] for i in p["permutation"]), c.opaque, value)
    if name == "concatenate":
      axis = p["dimension"]
      runs = tuple(r for x in ins for r in (x.labels[axis] or (None,)))
      if None not in runs:
        rest = _Const(shape, c.labels, any(x.opaque for x in ins), None)
        return dataclasses.replace(rest, labels=tuple(
            runs if i == axis else l for i, l in enumerate(c.labels)))
    if name == "slice" and set(p["strides"] or (1,)) == {1}:
      labels = list(c.labels)
      for axis, (start, stop) in enumerate(zip(p["start_indices"], p["limit_indices"])):
        if labels[axis] is not None and (start, stop) != (0, c.shape[axis]):
          labels[axis] = _slice_runs(labels[axis], start, stop)
      if None not in [l for l, n in zip(labels, c.labels) if n is not None]:
        return _Const(shape, tuple(labels), c.opaque, value)
    return _opaque(eqn.outvars[0].aval)

  # Activations: what they are made of.
  def node(self, node: graph_lib.Node, hw: int) -> str:
    self.nodes[node.name], self.post[node.name], self.hw[node.name] = node, [], hw
    return node.name

  def fresh(self, kind: str) -> str:
    self.counts[kind] = self.counts.get(kind, 0) + 1
    return f"{kind}{self.counts[kind]}"

  def inputs(self, x: _Act, eqn, where: str) -> tuple[str, ...]:
    """The nodes that a layer, add or output reading `x` reads: pools and shortcuts made here."""
    if x.divisor != 1:
      _refuse(eqn, where, "a sum over the image that is not divided by its size (a mean)")
    real = [s for s in x.segs if s.node is not None]
    for s in real:
      self.reads.append((s.node, s.version, where))
    names = tuple(dict.fromkeys(s.node for s in real))
    if len(names) != len(real):
      _refuse(eqn, where, "reads some node's channels twice")
    zeros = [i for i, s in enumerate(x.segs) if s.node is None]
    if x.identity() and not zeros:
      return names
    key = (x.segs, x.views, x.fill)
    if key in self.pooled:
      return (self.pooled[key],)
    (h, w), hw = x.views, x.hw
    if h != w:
      _refuse(eqn, where, f"pools or subsamples height and width differently ({h} and {w})")
    if len(h.offsets) > 1:
      window, lo = len(h.offsets), -h.offsets[0]
      if zeros or h.offsets != tuple(range(-lo, window - lo)):
        _refuse(eqn, where, f"a max over pixels {h.offsets} that is not a max-pool's window")
      padded = lo > 0 or h.offsets[-1] + h.stride * (h.size - 1) >= hw
      if padded and x.fill != -math.inf:
        _refuse(eqn, where, f"a max-pool padded with {x.fill}, not -inf")
      padding = _padding(hw, window, h.stride, lo, h.size)
      if padding is None:
        _refuse(eqn, where, f"a max-pool {window}x{window}/{h.stride} with padding {lo} on "
                f"{hw}x{hw} that is neither the same on every side nor 'SAME'")
      pool = graph_lib.Pool(self.fresh("max_pool"), names, window=window, stride=h.stride,
                            padding=padding)
      name = self.node(pool, h.size)
    else:
      before = next((i for i, s in enumerate(x.segs) if s.node is not None), len(x.segs))
      if h.offsets != (0,) or h.size != -(-hw // h.stride) or x.fill is not None or any(
          s.node is None for s in x.segs[before:len(x.segs) - _trailing_zeros(x.segs)]):
        _refuse(eqn, where, "a crop, a shift or zero channels between others: only a shortcut's "
                "x[:, ::s, ::s] padded with zero channels before and after is a graph node")
      pad = graph_lib.Pad(
          self.fresh("shortcut"), names, stride=h.stride,
          before=sum(s.channels for s in x.segs[:before]),
          after=sum(s.channels for s in x.segs[len(x.segs) - _trailing_zeros(x.segs):]))
      name = self.node(pad, h.size)
    self.pooled[key] = name
    return (name,)

  def rebase(self, x: _Act) -> _Act:
    """`x` as the output of the pool or shortcut already made of it, if one was: what a second
    pool of a pooled map reads."""
    name = self.pooled.get((x.segs, x.views, x.fill))
    if name is None:
      return x
    return dataclasses.replace(self.produce(name, x.channels, x.views[0].size), roles=x.roles)

  def produce(self, name: str, channels: int, hw: int) -> _Act:
    view = _View((0,), 1, hw)
    return _Act(("N", "H", "W", "C"), (_Seg(name, 0, channels),), hw, (view, view))

  def apply(self, seg: _Seg, stage: str, eqn, where: str, **changes) -> _Seg:
    """`seg` after one of its node's following operations (bias, BN, ReLU, gate)."""
    node, chain = self.nodes.get(seg.node), self.post.get(seg.node)
    stages = _LAYER_STAGES if isinstance(node, graph_lib.Layer) else {"relu": 0}
    if not isinstance(node, (graph_lib.Layer, graph_lib.Add)) or stage not in stages:
      what = "zero channels" if seg.node is None else f"the output of {seg.node}"
      _refuse(eqn, where, f"a per-channel {stage} on {what}: only a layer's bias, BN, ReLU "
              "and gate, and an add's ReLU, are graph nodes")
    if seg.version != len(chain):
      _refuse(eqn, where, f"{seg.node}'s output goes two ways: once after its "
              f"{chain[seg.version:] or 'computation'}, once with a {stage}")
    if chain and (stages[stage] < stages[chain[-1]] or stage in chain and stage != "bn"):
      _refuse(eqn, where, f"a {stage} after the {chain[-1]} of {seg.node}: a layer is "
              "conv, bias, BN, then ReLU and gate, each once")
    chain.append(stage)
    self.nodes[seg.node] = dataclasses.replace(node, **changes)
    return dataclasses.replace(seg, version=seg.version + 1)

  # Operations on activations, by primitive.
  def act_conv_general_dilated(self, eqn, ins, where):
    x, kernel = ins
    p = eqn.params
    if not isinstance(x, _Act) or not isinstance(kernel, _Const):
      _refuse(eqn, where, "a convolution of activations by anything but a module's kernel")
    lhs, rhs, out = p["dimension_numbers"]
    if tuple(x.roles[i] for i in lhs) != ("N", "C", "H", "W"):
      _refuse(eqn, where, f"a convolution over axes {[x.roles[i] for i in lhs]}, not NHWC's")
    if p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
      _refuse(eqn, where, f"a grouped convolution (feature_group_count="
              f"{p['feature_group_count']}): the channel graph has no grouped or depthwise layers")
    if set(p["lhs_dilation"]) | set(p["rhs_dilation"]) != {1}:
      _refuse(eqn, where, "a dilated convolution: the channel graph has none")
    path = self.kernel_path(kernel, rhs[1], rhs[0], eqn, where)
    k_h, k_w = (kernel.shape[i] for i in rhs[2:])
    (s_h, s_w), (pad_h, pad_w) = p["window_strides"], p["padding"]
    size = eqn.outvars[0].aval.shape[out[2]]
    side = x.views[0].size  # of what it reads, a pool's output if it reads a pool
    padding = _padding(side, k_h, s_h, pad_h[0], size) if pad_h == pad_w else None
    if (k_h, s_h) != (k_w, s_w) or padding is None:
      _refuse(eqn, where, f"a {k_h}x{k_w} convolution, stride {(s_h, s_w)}, padding "
              f"{p['padding']}: a layer's is square and padded the same on every side or 'SAME'")
    c_out = kernel.shape[rhs[0]]
    layer = graph_lib.Layer(_name(path), self.inputs(x, eqn, where), x.channels, c_out,
                            kernel=k_h, stride=s_h, padding=padding, relu=False, path=path,
                            bias=False)
    self.new_layer(layer, eqn, where, size)
    roles = [None] * 4
    for role, axis in zip(("N", "C", "H", "W"), out):
      roles[axis] = role
    return dataclasses.replace(self.produce(layer.name, c_out, size), roles=tuple(roles))

  def act_dot_general(self, eqn, ins, where):
    x, kernel = ins
    if isinstance(x, _Patches):
      return self.im2col(x, kernel, eqn, where)
    ((contract, k_contract), batch) = eqn.params["dimension_numbers"]
    if not isinstance(x, _Act) or not isinstance(kernel, _Const) or any(batch) or len(
        contract) != 1 or len(kernel.shape) != 2:
      _refuse(eqn, where, "a product of activations by anything but a module's kernel "
              "(activations on the left, one axis contracted)")
    if x.roles[contract[0]] == "F":
      _refuse(eqn, where, "a dense layer on a flattened map: the channel graph states dense "
              "layers on [batch, channels] (pool the map to 1x1 first)")
    if x.roles[contract[0]] != "C":
      _refuse(eqn, where, f"a product over axis {x.roles[contract[0]]}, not channels")
    out_axis = 1 - k_contract[0]
    path = self.kernel_path(kernel, k_contract[0], out_axis, eqn, where)
    c_out, side = kernel.shape[out_axis], x.views[0].size
    ndim = len(graph_lib.at(self.module, path).kernel.shape)
    if ndim == 2 and ({"H", "W"} & set(x.roles) or side != 1):
      _refuse(eqn, where, "a dense layer on every pixel of a map: write it as a 1x1 convolution")
    layer = graph_lib.Layer(_name(path), self.inputs(x, eqn, where), x.channels, c_out,
                            kernel=1, dense=ndim == 2, relu=False, path=path, bias=False,
                            **({} if ndim == 2 else {"padding": 0}))
    self.new_layer(layer, eqn, where, side)
    roles = tuple(r for i, r in enumerate(x.roles) if i != contract[0]) + ("C",)
    return dataclasses.replace(self.produce(layer.name, c_out, side), roles=roles)

  def im2col(self, x: _Patches, kernel: _Const, eqn, where: str) -> _Act:
    """A stride-1 convolution as im2col computes it: the patches by the kernel's [k*k*Ci, Co]."""
    ((contract, k_contract), batch) = eqn.params["dimension_numbers"]
    if (not isinstance(kernel, _Const) or any(batch) or len(contract) != 1
        or x.base.roles[contract[0]] != "C" or len(kernel.shape) != 2):
      _refuse(eqn, where, "im2col patches multiplied by anything but a kernel on channels")
    path = self.kernel_path(kernel, k_contract[0], 1 - k_contract[0], eqn, where, merged=True)
    k, _, c_in, c_out = graph_lib.at(self.module, path).kernel.shape
    lo = -x.taps[0][0]
    if x.taps != tuple((i - lo, j - lo) for i in range(k) for j in range(k)) or (
        c_in != x.base.channels):
      _refuse(eqn, where, f"im2col taps {x.taps} that are not a {k}x{k} kernel's, in its order")
    padding = _padding(x.base.hw, k, 1, lo, x.size)
    if padding is None:
      _refuse(eqn, where, f"an im2col convolution padded by {lo} that is neither the same on "
              "every side nor 'SAME'")
    layer = graph_lib.Layer(_name(path), self.inputs(x.base, eqn, where), c_in, c_out, kernel=k,
                            padding=padding, relu=False, path=path, bias=False)
    self.new_layer(layer, eqn, where, x.size)
    roles = tuple(r for i, r in enumerate(x.base.roles) if i != contract[0]) + ("C",)
    return dataclasses.replace(self.produce(layer.name, c_out, x.size), roles=roles)

  def kernel_path(self, kernel: _Const, in_axis: int, out_axis: int, eqn, where: str,
                  merged: bool = False) -> graph_lib.Path:
    """The path of the module whose `kernel` `kernel` is, its in and out axes whole; `merged`:
    its in axis is the variable's (H, W, I) flattened, as im2col multiplies it."""
    runs = (kernel.labels[in_axis], kernel.labels[out_axis])
    sources = {src for r in runs if r for run in r for src in run.sources}
    paths = {path for path, _ in sources}
    if kernel.opaque or None in runs or len(paths) != 1 or any(len(r) != 1 for r in runs):
      _refuse(eqn, where, "a kernel that is not one variable's, whole")
    (path,) = paths
    variable = tuple(graph_lib.at(self.module, path).shape)
    want_in, want_out = len(variable) - 2, len(variable) - 1
    in_size = variable[want_in]
    if merged:
      want_in, in_size = tuple(range(want_out)), math.prod(variable[:-1])
    if (path[-1] != "kernel" or runs[0][0].sources != {(path, want_in)}
        or runs[1][0].sources != {(path, want_out)}
        or (runs[0][0].start, runs[0][0].stop) != (0, in_size)
        or (runs[1][0].start, runs[1][0].stop) != (0, variable[want_out])):
      _refuse(eqn, where, f"{_name(path)} is not a module's kernel used whole, its inputs "
              "and outputs on its last two axes (HWIO)")
    return path[:-1]

  def new_layer(self, layer: graph_lib.Layer, eqn, where: str, hw: int) -> None:
    if layer.name in self.nodes:
      _refuse(eqn, where, f"{layer.name} is called twice: a layer of the graph is used once")
    self.node(layer, hw)

  def act_reduce_sum(self, eqn, ins, where):
    (x,) = ins
    axes = {x.roles[i] for i in eqn.params["axes"]}
    left = {x.roles[i] for i in range(len(x.roles)) if i not in eqn.params["axes"]}
    if not axes <= {"H", "W", "1"} or {"H", "W"} & left:
      _refuse(eqn, where, f"a sum over {sorted(map(str, axes))}: only the global average "
              "pool, a mean over height and width, is a graph node")
    name = self.node(graph_lib.Pool(self.fresh("global_pool"),
                                            self.inputs(x, eqn, where), kind="mean"), 1)
    one = _View((0,), 1, 1)
    roles = tuple(r for i, r in enumerate(x.roles) if i not in eqn.params["axes"])
    return _Act(roles, (_Seg(name, 0, x.channels),), 1, (one, one),
                divisor=x.views[0].size * x.views[1].size)

  def act_reduce_max(self, eqn, ins, where):
    x = self.rebase(ins[0])
    views = list(x.views)
    for i in eqn.params["axes"]:
      role, k = x.roles[i], eqn.invars[0].aval.shape[i]
      if role in ("H", "W"):  # The whole axis: a window as wide as the map, one output.
        v = views["HW".index(role)]
        views["HW".index(role)] = _View(
            tuple(sorted({o + v.stride * j for o in v.offsets for j in range(k)})), v.stride * k, 1)
        continue
      if not isinstance(role, tuple):
        _refuse(eqn, where, f"a max over axis {role}: not a graph node")
      axis = "HW".index(role[0])
      v = views[axis]
      views[axis] = dataclasses.replace(v, offsets=tuple(sorted(
          {o + role[1] * j for o in v.offsets for j in range(k)})))
    roles = tuple(r for i, r in enumerate(x.roles) if i not in eqn.params["axes"])
    return dataclasses.replace(x, roles=roles, views=tuple(views))

  def act_reduce_window_max(self, eqn, ins, where):
    x = self.rebase(ins[0])
    p = eqn.params
    views = list(x.views)
    for i, role in enumerate(x.roles):
      k, s, (lo, _) = p["window_dimensions"][i], p["window_strides"][i], p["padding"][i]
      if set(p["base_dilation"]) | set(p["window_dilation"]) != {1}:
        _refuse(eqn, where, "a dilated pool")
      if role in ("H", "W"):
        v = views["HW".index(role)]
        views["HW".index(role)] = _View(
            tuple(sorted({o + v.stride * (j - lo) for o in v.offsets for j in range(k)})),
            v.stride * s, eqn.outvars[0].aval.shape[i])
      elif (k, s, p["padding"][i]) != (1, 1, (0, 0)):
        _refuse(eqn, where, f"a max-pool over axis {role}")
    return dataclasses.replace(x, views=tuple(views), fill=-math.inf)

  def act_reshape(self, eqn, ins, where):
    x = self.rebase(ins[0])
    old, new = tuple(eqn.invars[0].aval.shape), tuple(eqn.params["new_sizes"])
    if old == new:
      return x
    axes = [(n, r) for n, r in zip(old, x.roles) if n != 1 or r in ("N", "C")]
    roles, views, i = [], list(x.views), 0
    for j, n in enumerate(new):
      size, role = axes[i] if i < len(axes) else (None, None)
      # A spatial axis of k split into (1, k): the outer one is the pooled map's, of side 1.
      split_off_one = n == 1 and role in ("H", "W") and new[j + 1:j + 2] == (size,)
      if n == 1 and size != 1 and not split_off_one:
        roles.append("1")
      elif size == n:
        roles.append(role)
        i += 1
      elif size > n and size % n == 0 and role in ("H", "W"):
        # A split of a spatial axis into (outer, inner), as a 2x2 pool's reshape does.
        inner = size // n
        v = views["HW".index(role)]
        views["HW".index(role)] = _View(v.offsets, v.stride * inner, n)
        roles.append(role)
        axes[i] = (inner, (role, v.stride))
      else:
        product, merged = 1, []
        while product < n and i < len(axes):
          product *= axes[i][0]
          merged.append(axes[i][1])
          i += 1
        if product != n or "N" in merged:
          _refuse(eqn, where, f"a reshape of {old} to {new} that mixes the batch or splits "
                  "channels")
        roles.append("F")
    if i != len(axes):
      _refuse(eqn, where, f"a reshape of {old} to {new} that the channel graph cannot follow")
    return dataclasses.replace(x, roles=tuple(roles), views=tuple(views))

  def act_squeeze(self, eqn, ins, where):
    (x,) = ins
    dims = set(eqn.params["dimensions"])
    if any(x.roles[i] in ("N", "C") for i in dims):
      _refuse(eqn, where, "a squeeze of the batch or channel axis")
    return dataclasses.replace(x, roles=tuple(r for i, r in enumerate(x.roles) if i not in dims))

  def act_broadcast_in_dim(self, eqn, ins, where):
    (x,) = ins
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    if any(n != 1 for i, n in enumerate(shape) if i not in dims) or any(
        eqn.invars[0].aval.shape[old] != shape[new] for old, new in enumerate(dims)):
      _refuse(eqn, where, "an activation broadcast over a new axis")
    roles = ["1"] * len(shape)
    for old, new in enumerate(dims):
      roles[new] = x.roles[old]
    return dataclasses.replace(x, roles=tuple(roles))

  def act_transpose(self, eqn, ins, where):
    (x,) = ins
    return dataclasses.replace(x, roles=tuple(x.roles[i] for i in eqn.params["permutation"]))

  def act_slice(self, eqn, ins, where):
    x = self.rebase(ins[0])
    p, views = eqn.params, list(x.views)
    strides = p["strides"] or (1,) * len(x.roles)
    for i, role in enumerate(x.roles):
      start, stop, step = p["start_indices"][i], p["limit_indices"][i], strides[i]
      if role in ("H", "W"):
        v = views["HW".index(role)]
        views["HW".index(role)] = _View(tuple(o + v.stride * start for o in v.offsets),
                                        v.stride * step, -(-(stop - start) // step))
      elif (start, stop, step) != (0, eqn.invars[0].aval.shape[i], 1):
        _refuse(eqn, where, f"a slice of axis {role}: the channel graph selects no channels")
    return dataclasses.replace(x, views=tuple(views))

  def act_pad(self, eqn, ins, where):
    x, fill = ins
    if not isinstance(x, _Act) or not isinstance(fill, _Const) or fill.value is None:
      _refuse(eqn, where, "a pad of activations with anything but one number")
    if any(len(v.offsets) > 1 for v in x.views) and fill.value != x.fill:
      self.inputs(x, eqn, where)  # A finished max-pool, padded for what reads it.
    x = self.rebase(x)
    segs, views, padded = x.segs, list(x.views), False
    for role, config in zip(x.roles, eqn.params["padding_config"]):
      lo, hi, interior = map(int, config)
      if interior or (lo, hi) == (0, 0):
        if interior:
          _refuse(eqn, where, "an interior pad")
        continue
      if role == "C":
        if fill.value != 0 or lo < 0 or hi < 0:
          _refuse(eqn, where, "channels padded with anything but zeros, or cropped")
        segs = ((_Seg(None, 0, lo),) if lo else ()) + segs + ((_Seg(None, 0, hi),) if hi else ())
      elif role in ("H", "W"):
        v = views["HW".index(role)]
        views["HW".index(role)] = _View(tuple(o - v.stride * lo for o in v.offsets), v.stride,
                                        v.size + lo + hi)
        padded = True
      else:
        _refuse(eqn, where, f"a pad of axis {role}")
    if padded and x.fill is not None and x.fill != fill.value:
      _refuse(eqn, where, f"padded with {fill.value} after {x.fill}")
    return dataclasses.replace(x, segs=segs, views=tuple(views),
                               fill=fill.value if padded else x.fill)

  def act_concatenate(self, eqn, ins, where):
    axis = eqn.params["dimension"]
    if not all(isinstance(x, _Act) for x in ins) or ins[0].roles[axis] != "C":
      _refuse(eqn, where, "a concatenation that is not of activations on channels")
    first = ins[0]
    if all((x.views, x.hw, x.fill, x.divisor) == (first.views, first.hw, first.fill,
                                                  first.divisor) for x in ins):
      return dataclasses.replace(first, segs=tuple(s for x in ins for s in x.segs))
    # Copies of one map, each shifted by a tap of a window and zero-padded: im2col.
    views = [x.views for x in ins]
    if all((x.segs, x.hw, x.divisor, x.roles) == (first.segs, first.hw, 1, first.roles)
           and x.fill in (None, 0) and len({(v.stride, v.size) for v in x.views}) == 1
           and all(len(v.offsets) == 1 and v.stride == 1 for v in x.views) for x in ins):
      view = _View((0,), 1, first.hw)
      return _Patches(dataclasses.replace(first, views=(view, view), fill=None),
                      tuple((h.offsets[0], w.offsets[0]) for h, w in views), views[0][0].size)
    _refuse(eqn, where, "a concatenation of differently pooled or shaped activations")

  def act_ge(self, eqn, ins, where):
    a, b = ins
    if not (isinstance(a, _Act) and isinstance(b, _Act)):
      _refuse(eqn, where, "a comparison of an activation with a constant")
    return _Compare(a, b)

  act_gt = act_ge

  def act_select_n(self, eqn, ins, where):
    which, *cases = ins
    if not isinstance(which, _Compare) or len(cases) != 2 or cases[1] is not which.a or (
        cases[0] is not which.b):
      _refuse(eqn, where, "a select that is not where(a >= b, a, b), a maximum")
    return self.maximum(which.a, which.b, eqn, where)

  def maximum(self, a: _Act, b: _Act, eqn, where: str) -> _Act:
    """The max of two windows on the same channels and grid: one window, their union."""
    if (a.roles, a.segs, a.hw, a.divisor) != (b.roles, b.segs, b.hw, b.divisor) or any(
        (u.stride, u.size) != (v.stride, v.size) for u, v in zip(a.views, b.views)):
      _refuse(eqn, where, "a maximum of two activations that is not a max-pool")
    fills = {f for f in (a.fill, b.fill) if f is not None}
    if len(fills) > 1:
      _refuse(eqn, where, f"a max-pool padded with {sorted(fills)}")
    if a.views[0] != b.views[0] and a.views[1] != b.views[1]:
      # Windows differing along both axes would be a diagonal, not their product.
      _refuse(eqn, where, "a maximum of windows that differ along both axes at once")
    views = tuple(dataclasses.replace(u, offsets=tuple(sorted(set(u.offsets) | set(v.offsets))))
                  for u, v in zip(a.views, b.views))
    return dataclasses.replace(a, views=views, fill=next(iter(fills), None))

  def act_max(self, eqn, ins, where):
    a, b = ins
    if isinstance(a, _Act) and isinstance(b, _Act):
      return self.maximum(a, b, eqn, where)
    x, c = (a, b) if isinstance(a, _Act) else (b, a)
    if c.value != 0 or c.opaque:
      _refuse(eqn, where, "a max with anything but 0 (a ReLU) or another window of a pool")
    return self.per_channel(x, "relu", eqn, where, relu=True)

  def per_channel(self, x: _Act, stage: str, eqn, where: str, **changes) -> _Act:
    if not x.identity() or x.divisor != 1:
      _refuse(eqn, where, f"a {stage} after a pool or a shortcut: not a graph node")
    return dataclasses.replace(x, segs=tuple(self.apply(s, stage, eqn, where, **changes)
                                             for s in x.segs))

  def act_add(self, eqn, ins, where):
    a, b = ins
    if isinstance(a, _Act) and isinstance(b, _Act):
      if eqn.invars[0].aval.shape != eqn.invars[1].aval.shape:
        _refuse(eqn, where, "an add of activations of different shapes")
      names = self.inputs(a, eqn, where) + self.inputs(b, eqn, where)
      if len(names) != 2:
        _refuse(eqn, where, "an add of concatenations: a residual add's operands are single nodes")
      name = self.node(graph_lib.Add(self.fresh("add"), names, relu=False), a.hw)
      return dataclasses.replace(self.produce(name, a.channels, a.hw), roles=a.roles)
    return self.affine(eqn, ins, where)

  def act_sub(self, eqn, ins, where):
    return self.affine(eqn, ins, where)

  def act_mul(self, eqn, ins, where):
    return self.affine(eqn, ins, where)

  def act_div(self, eqn, ins, where):
    x, c = ins
    if isinstance(x, _Act) and isinstance(c, _Const) and x.divisor != 1:
      if c.value != x.divisor:
        _refuse(eqn, where, f"a sum over {x.divisor} pixels divided by {c.value}")
      return dataclasses.replace(x, divisor=1)
    return self.affine(eqn, ins, where)

  def affine(self, eqn, ins, where):
    """An activation and a per-channel operand: a layer's bias, BN or gate."""
    op = eqn.primitive.name
    x, c = (ins[0], ins[1]) if isinstance(ins[0], _Act) else (ins[1], ins[0])
    if not isinstance(c, _Const) or (op in ("sub", "div") and x is not ins[0]):
      _refuse(eqn, where, f"a {op} of two activations: only an add of two is a graph node")
    if "C" not in x.roles:
      _refuse(eqn, where, f"a {op} of a flattened map: not a graph node")
    if c.opaque or any(l is not None and n != 1 for r, l, n in zip(
        x.roles, c.labels[-len(x.roles):], c.shape[-len(x.roles):]) if r != "C"):
      _refuse(eqn, where, f"a {op} by an operand that varies over pixels or the batch")
    axis = x.roles.index("C") - len(x.roles) + len(c.shape)
    runs = c.labels[axis] if 0 <= axis < len(c.shape) else None
    if runs is None:
      if op == "mul" and x.divisor != 1 and c.value is not None and math.isclose(
          c.value * x.divisor, 1, rel_tol=1e-6):
        return dataclasses.replace(x, divisor=1)
      if (op in ("add", "sub") and c.value == 0) or (op in ("mul", "div") and c.value == 1):
        return x
      _refuse(eqn, where, f"a {op} of every channel by one number: not a graph node")
    if not x.identity() or x.divisor != 1:
      _refuse(eqn, where, f"a per-channel {op} after a pool or a shortcut")
    runs, segs = list(runs), []
    for seg in x.segs:
      run = runs.pop(0) if runs else None
      if run is None or run.stop - run.start != seg.channels:
        _refuse(eqn, where, f"a per-channel {op} whose operand's parts do not match "
                "the layers' channels")
      segs.append(self.operand(seg, run, op, eqn, where))
    return dataclasses.replace(x, segs=tuple(segs))

  def operand(self, seg: _Seg, run: _Run, op: str, eqn, where: str) -> _Seg:
    """`seg` after `op` with the variables of `run`: its layer's bias, BN or gate."""
    paths = {path for path, _ in run.sources}
    node = self.nodes.get(seg.node)
    whole = all(run.start == 0 and run.stop == graph_lib.at(self.module, path).shape[axis]
                for path, axis in run.sources)
    parent = next(iter(paths))[:-1]
    if whole and isinstance(node, graph_lib.Layer):
      if op == "mul" and len(paths) == 1 and issubclass(self.kinds[min(paths)], gates.LogAlpha):
        (path,) = paths
        gate = graph_lib.Gate(_name(parent if path[-1] == "log_alpha" else path), run.stop, path)
        self.gates.append(gate)
        return self.apply(seg, "gate", eqn, where, gate=gate.name)
      if op == "add" and paths == {(*node.path, "bias")}:
        return self.apply(seg, "bias", eqn, where, bias=True)
      if ({p[:-1] for p in paths} == {parent}
          and isinstance(graph_lib.at(self.module, parent), nnx.BatchNorm)
          and {p[-1] for p in paths} <= _BATCH_NORM.get(op, set())):
        if node.bn not in (None, parent):
          _refuse(eqn, where, f"{seg.node} is normalised twice")
        self.bn_used.setdefault(seg.node, set()).update(p[-1] for p in paths)
        return self.apply(seg, "bn", eqn, where, bn=parent)
    _refuse(eqn, where, f"a per-channel {op} of {seg.node or 'zero channels'} by "
            f"{', '.join(sorted(map(_name, paths)))}: not its bias, its BatchNorm or an L0 gate")

  # The graph.
  def finish(self, out: Any, in_channels: int, input_hw: int) -> graph_lib.Graph:
    if not isinstance(out, _Act) or out.roles != ("N", "C"):
      raise GraphError("cannot trace the network's output: it is not [batch, classes] logits "
                       "computed from the images")
    last = self.inputs(out, None, "the output")
    if last != tuple(list(self.nodes)[-1:]):
      raise GraphError(f"cannot trace the network's output: it is {last}, computed before "
                       f"{list(self.nodes)[-1]}")
    for node, version, where in self.reads:
      if version != len(self.post[node]):
        raise GraphError(f"cannot trace {where}: it reads {node} before its "
                         f"{', '.join(self.post[node][version:])}, which the graph applies "
                         "before anything reads a layer")
    read = {name for node in self.nodes.values() for name in node.inputs}
    if unused := [n for n in list(self.nodes)[:-1] if n not in read]:
      raise GraphError(f"cannot trace the network: the output of {unused[0]} is never used")
    for name, used in self.bn_used.items():
      bn = graph_lib.at(self.module, self.nodes[name].bn)
      want = {v for v in ("mean", "var", "scale", "bias") if getattr(bn, v, None) is not None}
      if used != want:
        raise GraphError(f"cannot trace {name}: its BatchNorm uses {sorted(used)}, not "
                         f"{sorted(want)} (the running averages, in eval mode)")
    graph = graph_lib.Graph(input_hw, in_channels, tuple(self.nodes.values()), tuple(self.gates))
    for name, hw in self.hw.items():
      if graph.out_hw(name) != hw:
        raise GraphError(f"cannot trace {name}: its output is {hw}x{hw}, the graph derives "
                         f"{graph.out_hw(name)}")
    graph.check(self.module)
    return graph


def _merged_leading_axes(c: _Const, shape: tuple[int, ...]) -> _Const | None:
  """`c` reshaped to `shape` by flattening its leading axes into one, as im2col reshapes a
  kernel to [k*k*Ci, Co]; None if that is not the reshape, or the axes are not one variable's."""
  merge = len(c.shape) - len(shape) + 1
  if merge < 2 or shape != (math.prod(c.shape[:merge]), *c.shape[merge:]):
    return None
  runs = c.labels[:merge]
  if None in runs or any(len(r) != 1 or len(r[0].sources) != 1 for r in runs):
    return None
  sources = [next(iter(r[0].sources)) for r in runs]
  if len({path for path, _ in sources}) != 1 or [axis for _, axis in sources] != list(
      range(merge)) or any((r[0].start, r[0].stop) != (0, n) for r, n in zip(runs, c.shape)):
    return None
  run = _Run(frozenset({(sources[0][0], tuple(range(merge)))}), 0, shape[0])
  return _Const(shape, (((run,),) + c.labels[merge:]), c.opaque, None)


def _opaque(aval) -> _Const:
  shape = tuple(getattr(aval, "shape", ()))
  return _Const(shape, (None,) * len(shape), opaque=True)


def _merge_runs(found: set) -> tuple[_Run, ...] | None:
  """Runs of several operands along one axis as one, their sources joined; None unless their
  parts are the same channels."""
  found = list(found)
  parts = {tuple((r.start, r.stop) for r in runs) for runs in found}
  if len(parts) != 1:
    return None
  return tuple(_Run(frozenset().union(*(runs[i].sources for runs in found)), start, stop)
               for i, (start, stop) in enumerate(parts.pop()))


def _slice_runs(runs: tuple[_Run, ...], start: int, stop: int) -> tuple[_Run, ...] | None:
  out, at = [], 0
  for r in runs:
    n = r.stop - r.start
    lo, hi = max(start - at, 0), min(stop - at, n)
    if lo < hi:
      out.append(_Run(r.sources, r.start + lo, r.start + hi))
    at += n
  return tuple(out) or None


def _trailing_zeros(segs: tuple[_Seg, ...]) -> int:
  n = 0
  while n < len(segs) and segs[len(segs) - 1 - n].node is None:
    n += 1
  return n


def _padding(hw: int, kernel: int, stride: int, lo: int, size: int) -> int | str | None:
  """How a layer or pool states a window of `kernel` at `stride` starting `lo` pixels before
  the grid, `size` of them: the same pad on every side if that is it, else 'SAME', else None."""
  lo = int(lo)
  if lo >= 0 and (hw + 2 * lo - kernel) // stride + 1 == size:
    return lo
  same = max((size - 1) * stride + kernel - hw, 0) // 2
  return "SAME" if size == -(-hw // stride) and lo == same else None


def _variables(state: nnx.State) -> list[tuple[graph_lib.Path, nnx.Variable]]:
  return [(tuple(path), v) for path, v in nnx.to_flat_state(state)]


def renamed(graph: graph_lib.Graph, names: Mapping[str, str]) -> graph_lib.Graph:
  """`graph` with each node and gate named `names[name]` (those not in `names` keep theirs)."""
  new = lambda name: names.get(name, name)

  def rename(node: graph_lib.Node) -> graph_lib.Node:
    gate = {"gate": new(node.gate)} if getattr(node, "gate", None) else {}
    return dataclasses.replace(node, name=new(node.name), inputs=tuple(map(new, node.inputs)),
                               **gate)

  return graph_lib.Graph(graph.input_hw, graph.in_channels, tuple(map(rename, graph.nodes)),
                         tuple(dataclasses.replace(g, name=new(g.name)) for g in graph.gates))


def trace_graph(net: nnx.Module, example_images: Any, apply: Apply | None = None
                ) -> graph_lib.Graph:
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
  args.append(_Act(("N", "H", "W", "C"), (_Seg(graph_lib.INPUT, 0, channels),), height,
                   (view, view)))
  tracer.post[graph_lib.INPUT] = []
  outs = tracer.run(closed.jaxpr, closed.consts, args, "the forward pass")
  if len(outs) != 1:
    raise GraphError(f"cannot trace a network with {len(outs)} outputs: the graph's gives logits")
  return tracer.finish(outs[0], channels, height)
