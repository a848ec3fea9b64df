"""Training only the kept channels while the gates are fixed: the same function, fewer MACs.

With its gates fixed, a gated network's pruned channels are exactly zero
wherever they are read, so a training step need compute only the kept ones.
`apply` runs the network's layers in the order of its channel graph, each
with its kernel gathered to the kept input rows and output columns (indices
known when the step is compiled: `kept_channels`), BN and ReLU on the kept
channels alone, and the kept channels' test-time gates as a scale. The
layers are the network's own modules, called with the gathered arrays, so
each keeps its convolution method, dtype and BN arithmetic. Autodiff scatters
the gradients back into the full-size arrays: a pruned entry gets exactly 0,
as the masked step gives it, so parameters and optimizer state evolve as
there, up to float rounding. Checkpoints, evaluation, accounting and export
see the full network. One difference: the masked step still updates the
pruned channels' BN running statistics, which nothing reads; here they stay.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from l0jax import graphs, layers, vgg
from l0jax.kept_channels import KeptChannels


def _set(module: nnx.Module, name: str, value: jax.Array) -> None:
  """Replaces the array of `module`'s variable `name`, whatever its shape."""
  setattr(module, name, type(getattr(module, name))(value))


def _layer(net: nnx.Module, layer: graphs.Layer, x: jax.Array, rows: np.ndarray,
           columns: np.ndarray, out_hw: int, scale: np.ndarray | None) -> jax.Array:
  """The layer's kept `columns` from the kept input `rows` `x`, through its own modules."""
  conv = graphs.submodule_at(net, layer.path)
  kernel = jnp.take(jnp.take(conv.kernel[...], rows, axis=-2), columns, axis=-1)
  bias = None if conv.bias is None else jnp.take(conv.bias[...], columns)
  if rows.size:
    y, _ = _called(conv, x, {"kernel": kernel} if bias is None else {"kernel": kernel,
                                                                     "bias": bias})
  else:  # Every input closed: the conv of zeros, its bias.
    shape = (x.shape[0], columns.size) if layer.dense else (x.shape[0], out_hw, out_hw,
                                                              columns.size)
    y = jnp.zeros(shape, x.dtype) if bias is None else jnp.broadcast_to(bias.astype(x.dtype),
                                                                         shape)
  if layer.bn is not None:
    y = _batch_norm(graphs.submodule_at(net, layer.bn), y, columns)
  if layer.relu:
    y = nnx.relu(y)
  return y if scale is None else y * scale.astype(y.dtype)


def _called(module: nnx.Module, x: jax.Array, arrays: dict[str, jax.Array],
            **kwargs) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`module(x, **kwargs)` with the variables named in `arrays` holding those (smaller) arrays.

  Returns the output and what those variables held after the call (BN's
  updated statistics); the module holds its full arrays again.
  """
  full = {name: getattr(module, name)[...] for name in arrays}
  for name, value in arrays.items():
    _set(module, name, value)
  y = module(x, **kwargs)
  after = {name: getattr(module, name)[...] for name in arrays}
  for name, value in full.items():
    _set(module, name, value)
  return y, after


def _batch_norm(bn: nnx.BatchNorm, y: jax.Array, columns: np.ndarray) -> jax.Array:
  """Training-mode BN of the kept `columns`; their running statistics updated in place."""
  names = ("scale", "bias", "mean", "var")
  y, after = _called(bn, y, {name: jnp.take(getattr(bn, name)[...], columns) for name in names},
                     use_running_average=False)
  for name in ("mean", "var"):
    _set(bn, name, getattr(bn, name)[...].at[columns].set(after[name]))
  return y


def _pool(node: graphs.Pool, x: jax.Array) -> jax.Array:
  """The pool as the built-in networks compute it (their gradients are XLA:CPU's fast ones)."""
  if node.kind == "mean":
    return jnp.mean(x, axis=(1, 2))
  if (node.window, node.padding) == (3, 1):
    return layers.max_pool_3x3(x, node.stride)
  if (node.window, node.stride, node.padding) == (2, 2, 0):
    return vgg.max_pool_2x2(x)
  pad = (node.padding if isinstance(node.padding, str)
         else ((0, 0), (node.padding,) * 2, (node.padding,) * 2, (0, 0)))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, node.window, node.window, 1),
                               (1, node.stride, node.stride, 1), pad)


def apply(net: nnx.Module, graph: graphs.Graph, kept: KeptChannels,
          images: jax.Array) -> jax.Array:
  """Training-mode float32 logits of `net` at its fixed gates, computing only `kept`'s channels.

  Updates `net`'s BN statistics in place, as calling it in training does;
  nothing else of it changes.
  """
  values = {graphs.INPUT: images}
  for node in graph.nodes:
    if isinstance(node, graphs.Add):
      y = sum(values[name] for name in node.inputs)
      values[node.name] = nnx.relu(y) if node.relu else y
      continue
    x = jnp.concatenate([values[name] for name in node.inputs], axis=-1)
    if isinstance(node, graphs.Layer):
      columns = kept.indices[node.name]
      scale = kept.scale[node.name][columns] if node.gate_names else None
      values[node.name] = _layer(net, node, x, kept.read(node)[0], columns,
                                 graph.out_hw(node.name), scale)
    elif isinstance(node, graphs.Pad):
      x = x[:, ::node.stride, ::node.stride]
      values[node.name] = jnp.pad(x, ((0, 0), (0, 0), (0, 0), kept.pad_sides(node)))
    else:
      values[node.name] = _pool(node, x)
  return values[graph.nodes[-1].name].astype(jnp.float32)
