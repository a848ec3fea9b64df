"""Constructs the channel graph cannot state, in ordinary NNX networks given to `gate_network`:
refused in one line naming the operation and the line of the network's code (README)."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import l0jax

IMAGES = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)


class DepthwiseSeparable(nnx.Module):
  """conv -> MobileNet's block (depthwise 3x3 conv-BN-ReLU, pointwise 1x1 conv-BN-ReLU) ->
  mean -> dense."""

  def __init__(self, c: int = 8, *, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, c, (3, 3), rngs=rngs)
    self.depthwise = nnx.Conv(c, c, (3, 3), feature_group_count=c, use_bias=False, rngs=rngs)
    self.depthwise_bn = nnx.BatchNorm(c, rngs=rngs)
    self.pointwise = nnx.Conv(c, 2 * c, (1, 1), use_bias=False, rngs=rngs)
    self.pointwise_bn = nnx.BatchNorm(2 * c, rngs=rngs)
    self.head = nnx.Linear(2 * c, 10, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nnx.relu(self.stem(x))
    x = nnx.relu(self.depthwise_bn(self.depthwise(x), use_running_average=not train))
    x = nnx.relu(self.pointwise_bn(self.pointwise(x), use_running_average=not train))
    return self.head(jnp.mean(x, axis=(1, 2)))


class FlattenHead(nnx.Module):
  """conv-ReLU -> 2x2 max-pool -> flatten -> dense, as LeNet ends; or, `pooled`, the map
  averaged to 1x1 before the flatten."""

  def __init__(self, c: int = 8, pooled: bool = False, *, rngs: nnx.Rngs):
    self.pooled = pooled
    self.conv = nnx.Conv(3, c, (3, 3), rngs=rngs)
    self.head = nnx.Linear(c if pooled else c * 4 * 4, 10, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nnx.max_pool(nnx.relu(self.conv(x)), (2, 2), strides=(2, 2))
    if self.pooled:
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
    return self.head(x.reshape(x.shape[0], -1))


def line_of(method, code: str) -> str:
  """`file:line (Class.method)` of the line of `method` that holds `code`, as refusals name it."""
  lines, first = inspect.getsourcelines(method)
  line = first + next(i for i, text in enumerate(lines) if code in text)
  return f"{inspect.getsourcefile(method)}:{line} ({method.__qualname__})"


@pytest.mark.parametrize("network, op, code, why", [
    (DepthwiseSeparable, "conv_general_dilated", "self.depthwise(x)",
     "a grouped convolution (feature_group_count=8): the channel graph has no grouped or "
     "depthwise layers"),
    (FlattenHead, "dot_general", "self.head(",
     "a dense layer on a flattened map: the channel graph states dense layers on "
     "[batch, channels] (pool the map to 1x1 first)"),
], ids=["depthwise", "flatten_dense"])
def test_an_out_of_scope_construct_is_refused_in_one_line(network, op, code, why):
  with pytest.raises(l0jax.GraphError) as e:
    l0jax.gate_network(network(rngs=nnx.Rngs(0)), IMAGES, rngs=nnx.Rngs(1))
  assert str(e.value) == (f"cannot trace {op} at {line_of(network.__call__, code)}: {why}")


def test_a_flatten_of_a_1x1_map_is_a_dense_layer_on_channels(tmp_path):
  gated = l0jax.gate_network(FlattenHead(pooled=True, rngs=nnx.Rngs(0)), IMAGES,
                             rngs=nnx.Rngs(1))
  graph = l0jax.trace_graph(gated, IMAGES)
  assert [type(n).__name__ for n in graph.nodes] == ["Layer", "Pool", "Pool", "Layer"]
  assert graph.nodes[-1].dense and graph.layers[0].gate
  graph.set_log_alphas(gated, {g.name: np.where(np.arange(g.size) % 2, 5.0, -5.0)
                               for g in graph.gates})  # every other channel closed
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  metrics = l0jax.save_export(gated, graph, tmp_path / "export", images, np.zeros(3), np.ones(3))
  assert metrics["max_abs_logit_diff"] < 1e-4
  assert metrics["params_compact"] < l0jax.costs(gated, graph)["params_full"]
