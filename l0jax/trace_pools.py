"""Pools and the shape operations around them, read from the jaxpr (`tracing`).

A max-pool (pads with -inf, strided slices, maxima, a reshape and a max, or
`reduce_window_max`) widens an activation's windows until a node reads it; a
sum over the image is the global average pool; a concatenation on channels
joins activations, or shifted copies of one map into im2col patches.
"""

import dataclasses
import math

from l0jax import graphs
from l0jax.trace_errors import _refuse
from l0jax.trace_values import _Act, _Compare, _Const, _Patches, _Seg, _View


class _Pools:
  """The part of `tracing._Tracer` that reads pools, reshapes, slices, pads and
  concatenations."""

  def act_reduce_sum(self, eqn, ins, where):
    (x,) = ins
    axes = {x.roles[i] for i in eqn.params["axes"]}
    left = {x.roles[i] for i in range(len(x.roles)) if i not in eqn.params["axes"]}
    if not axes <= {"H", "W", "1"} or {"H", "W"} & left:
      _refuse(eqn, where, f"a sum over {sorted(map(str, axes))}: only the global average "
              "pool, a mean over height and width, is a graph node")
    name = self.node(graphs.Pool(self.fresh("global_pool"),
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
