"""The jaxpr read as a dataflow: each equation's inputs to its outputs (`tracing`).

Nested programs are read inside; equations on constants alone are followed
per axis, so that a kernel, a BN scale or a gate can be told apart; an
equation on activations goes to its `act_<primitive>` handler (in
`trace_layers`, `trace_stages` and `trace_pools`), or stops the trace.
"""

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from jax.extend import core as jax_core

from l0jax.trace_errors import _refuse, _where
from l0jax.trace_values import _Act, _Compare, _Const, _Patches, _Run

_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint")
_PASS = ("convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier")
_ELEMENTWISE = frozenset((
    "add", "sub", "mul", "div", "max", "min", "pow", "integer_pow", "exp", "exp2", "log",
    "log1p", "expm1", "logistic", "neg", "rsqrt", "sqrt", "abs", "sign", "tanh", "erf", "clamp",
    "select_n", "ge", "gt", "le", "lt", "eq", "ne", "and", "or", "not", "square",
    "stop_gradient", *_PASS))
_VALUES = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
           "max": np.maximum, "min": np.minimum, "neg": np.negative}



class _Flow:
  """The part of `tracing._Tracer` that runs the jaxpr and follows constants."""

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
    if name == "squeeze":
      return _Const(shape, tuple(l for i, l in enumerate(c.labels) if i not in p["dimensions"]),
                    c.opaque, value)
    if name == "reshape":
      if [n for n in c.shape if n != 1] == [n for n in shape if n != 1]:
        labels = dict(zip(_reshaped_axes(c.shape), c.labels))
        return _Const(shape, tuple(labels.get(k) for k in _reshaped_axes(shape)), c.opaque, value)
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


def _reshaped_axes(shape: tuple[int, ...]) -> list[tuple[int, int | None]]:
  """A key for each axis of `shape` that a reshape adding or dropping only unit axes keeps:
  how many axes longer than 1 follow it, and for a unit axis its place from the right among
  the unit axes beside it. Aligned on the right, as broadcasting is: a one-channel layer's
  bias (1,) reshaped to (1, 1, 1, 1) is per-channel on the last axis."""
  keys, longer, unit = [], 0, 0
  for n in reversed(shape):
    if n == 1:
      keys.append((longer, unit))
      unit += 1
    else:
      keys.append((longer, None))
      longer, unit = longer + 1, 0
  return keys[::-1]


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
