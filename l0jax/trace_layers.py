"""Convolutions and dense layers read from the jaxpr as `graphs.Layer`s (`tracing`).

XLA's convolution, a 1x1 one written as a dot, a stride-1 one as im2col
(shifted zero-padded copies concatenated and multiplied by the kernel's
[k*k*Ci, Co]), and a dense layer on [batch, channels]; its kernel's module
is its path.
"""

import dataclasses
import math

from l0jax import graphs
from l0jax.trace_errors import _refuse
from l0jax.trace_nodes import _name, _padding
from l0jax.trace_values import _Act, _Const, _Patches


class _Layers:
  """The part of `tracing._Tracer` that reads convolutions and dense layers."""

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
    layer = graphs.Layer(_name(path), self.inputs(x, eqn, where), x.channels, c_out,
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
    ndim = len(graphs.submodule_at(self.module, path).kernel.shape)
    if ndim == 2 and ({"H", "W"} & set(x.roles) or side != 1):
      _refuse(eqn, where, "a dense layer on every pixel of a map: write it as a 1x1 convolution")
    layer = graphs.Layer(_name(path), self.inputs(x, eqn, where), x.channels, c_out,
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
    k, _, c_in, c_out = graphs.submodule_at(self.module, path).kernel.shape
    lo = -x.taps[0][0]
    if x.taps != tuple((i - lo, j - lo) for i in range(k) for j in range(k)) or (
        c_in != x.base.channels):
      _refuse(eqn, where, f"im2col taps {x.taps} that are not a {k}x{k} kernel's, in its order")
    padding = _padding(x.base.hw, k, 1, lo, x.size)
    if padding is None:
      _refuse(eqn, where, f"an im2col convolution padded by {lo} that is neither the same on "
              "every side nor 'SAME'")
    layer = graphs.Layer(_name(path), self.inputs(x.base, eqn, where), c_in, c_out, kernel=k,
                         padding=padding, relu=False, path=path, bias=False)
    self.new_layer(layer, eqn, where, x.size)
    roles = tuple(r for i, r in enumerate(x.base.roles) if i != contract[0]) + ("C",)
    return dataclasses.replace(self.produce(layer.name, c_out, x.size), roles=roles)

  def kernel_path(self, kernel: _Const, in_axis: int, out_axis: int, eqn, where: str,
                  merged: bool = False) -> graphs.Path:
    """The path of the module whose `kernel` `kernel` is, its in and out axes whole; `merged`:
    its in axis is the variable's (H, W, I) flattened, as im2col multiplies it."""
    runs = (kernel.labels[in_axis], kernel.labels[out_axis])
    sources = {src for r in runs if r for run in r for src in run.sources}
    paths = {path for path, _ in sources}
    if kernel.opaque or None in runs or len(paths) != 1 or any(len(r) != 1 for r in runs):
      _refuse(eqn, where, "a kernel that is not one variable's, whole")
    (path,) = paths
    variable = tuple(graphs.submodule_at(self.module, path).shape)
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

  def new_layer(self, layer: graphs.Layer, eqn, where: str, hw: int) -> None:
    if layer.name in self.nodes:
      _refuse(eqn, where, f"{layer.name} is called twice: a layer of the graph is used once")
    self.node(layer, hw)
