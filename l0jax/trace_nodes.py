"""The graph's nodes as a trace makes them, their names, and the Graph they end in (`tracing`).

A layer is named for its module's path, pools, adds and shortcuts by kind and
number. An activation read by a layer, an add or the output becomes the nodes
it is made of, a pool or a shortcut being made of it here if it is one;
`finish` checks what was read against what the graph applies before it,
and builds and checks the `Graph`.
"""

import dataclasses
import math
from typing import Any

from l0jax import graphs
from l0jax.errors import GraphError
from l0jax.trace_errors import _refuse
from l0jax.trace_values import _Act, _Seg, _View


def _name(path: graphs.Path) -> str:
  return "/".join(map(str, path))


class _Nodes:
  """The part of `tracing._Tracer` that makes nodes and the Graph."""

  # Activations: what they are made of.
  def node(self, node: graphs.Node, hw: int) -> str:
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
      pool = graphs.Pool(self.fresh("max_pool"), names, window=window, stride=h.stride,
                         padding=padding)
      name = self.node(pool, h.size)
    else:
      before = next((i for i, s in enumerate(x.segs) if s.node is not None), len(x.segs))
      if h.offsets != (0,) or h.size != -(-hw // h.stride) or x.fill is not None or any(
          s.node is None for s in x.segs[before:len(x.segs) - _trailing_zeros(x.segs)]):
        _refuse(eqn, where, "a crop, a shift or zero channels between others: only a shortcut's "
                "x[:, ::s, ::s] padded with zero channels before and after is a graph node")
      pad = graphs.Pad(
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

  # The graph.
  def finish(self, out: Any, in_channels: int, input_hw: int) -> graphs.Graph:
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
      bn = graphs.submodule_at(self.module, self.nodes[name].bn)
      want = {v for v in ("mean", "var", "scale", "bias") if getattr(bn, v, None) is not None}
      if used != want:
        raise GraphError(f"cannot trace {name}: its BatchNorm uses {sorted(used)}, not "
                         f"{sorted(want)} (the running averages, in eval mode)")
    graph = graphs.Graph(input_hw, in_channels, tuple(self.nodes.values()), tuple(self.gates))
    for name, hw in self.hw.items():
      if graph.out_hw(name) != hw:
        raise GraphError(f"cannot trace {name}: its output is {hw}x{hw}, the graph derives "
                         f"{graph.out_hw(name)}")
    graph.check(self.module)
    return graph


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
