"""What follows a node per channel: a layer's bias, BN, ReLU and gate, an add's ReLU
(`tracing`).

They are read from operations on its outputs that read that module's `bias`,
the variables of an `nnx.BatchNorm`, `max` with 0, or a `gates.LogAlpha`, in
that order (a gate, being >= 0, may come before the ReLU); a sum of two
activations is an `Add`.
"""

import dataclasses
import math

from flax import nnx

from l0jax import gates, graphs
from l0jax.trace_errors import _refuse
from l0jax.trace_nodes import _name
from l0jax.trace_values import _Act, _Const, _Run, _Seg

# What may follow a Layer's conv, in this order; a gate is >= 0, so it and a ReLU commute.
_LAYER_STAGES = {"bias": 0, "bn": 1, "relu": 2, "gate": 2}
# What `nnx.BatchNorm` computes in eval mode: (x - mean) * (rsqrt(var + eps) * scale) + bias.
_BATCH_NORM = {"sub": {"mean"}, "mul": {"var", "scale"}, "add": {"bias"}}


class _Stages:
  """The part of `tracing._Tracer` that reads per-channel operations and adds."""

  def apply(self, seg: _Seg, stage: str, eqn, where: str, **changes) -> _Seg:
    """`seg` after one of its node's following operations (bias, BN, ReLU, gate)."""
    node, chain = self.nodes.get(seg.node), self.post.get(seg.node)
    stages = _LAYER_STAGES if isinstance(node, graphs.Layer) else {"relu": 0}
    if not isinstance(node, (graphs.Layer, graphs.Add)) or stage not in stages:
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
      name = self.node(graphs.Add(self.fresh("add"), names, relu=False), a.hw)
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
    # An operand of one channel broadcast over several is one number for every channel.
    per_channel = 0 <= axis < len(c.shape) and c.shape[axis] == x.channels
    runs = c.labels[axis] if per_channel else None
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
      covering = []  # a layer's outputs may be scaled by several gates, one run each
      while runs and sum(r.stop - r.start for r in covering) < seg.channels:
        covering.append(runs.pop(0))
      if sum(r.stop - r.start for r in covering) != seg.channels:
        _refuse(eqn, where, f"a per-channel {op} whose operand's parts do not match "
                "the layers' channels")
      segs.append(self.operand(seg, covering, op, eqn, where))
    return dataclasses.replace(x, segs=tuple(segs))

  def operand(self, seg: _Seg, runs: list[_Run], op: str, eqn, where: str) -> _Seg:
    """`seg` after `op` with the variables of `runs`: its layer's bias, BN or gates."""
    node = self.nodes.get(seg.node)
    if op == "mul" and isinstance(node, graphs.Layer) and all(map(self.is_gate, runs)):
      names = tuple(self.gate(run) for run in runs)
      return self.apply(seg, "gate", eqn, where, gate=names if len(names) > 1 else names[0])
    if len(runs) != 1:
      _refuse(eqn, where, f"a per-channel {op} of {seg.node} by parts of several variables "
              "that are not all L0 gates")
    (run,) = runs
    paths = {path for path, _ in run.sources}
    parent = next(iter(paths))[:-1]
    if self.is_whole(run) and isinstance(node, graphs.Layer):
      if op == "add" and paths == {(*node.path, "bias")}:
        return self.apply(seg, "bias", eqn, where, bias=True)
      if ({p[:-1] for p in paths} == {parent}
          and isinstance(graphs.submodule_at(self.module, parent), nnx.BatchNorm)
          and {p[-1] for p in paths} <= _BATCH_NORM.get(op, set())):
        if node.bn not in (None, parent):
          _refuse(eqn, where, f"{seg.node} is normalised twice")
        self.bn_used.setdefault(seg.node, set()).update(p[-1] for p in paths)
        return self.apply(seg, "bn", eqn, where, bn=parent)
    _refuse(eqn, where, f"a per-channel {op} of {seg.node or 'zero channels'} by "
            f"{', '.join(sorted(map(_name, paths)))}: not its bias, its BatchNorm or an L0 gate")

  def is_whole(self, run: _Run) -> bool:
    return all(run.start == 0 and run.stop == graphs.submodule_at(self.module, path).shape[axis]
               for path, axis in run.sources)

  def is_gate(self, run: _Run) -> bool:
    """Whether `run` is one `gates.LogAlpha`, whole."""
    paths = {path for path, _ in run.sources}
    return (len(paths) == 1 and issubclass(self.kinds[min(paths)], gates.LogAlpha)
            and self.is_whole(run))

  def gate(self, run: _Run) -> str:
    """The name of the gate `run` is, listed once however many layers it gates."""
    ((path, _),) = run.sources
    gate = graphs.Gate(_name(path[:-1] if path[-1] == "log_alpha" else path), run.stop, path)
    if gate not in self.gates:
      self.gates.append(gate)
    return gate.name
