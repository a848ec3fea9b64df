"""The network a config describes: built, and its channel graph, from the config alone.

Training builds it here; whatever counts a run's costs (`analysis`) asks here
for its graph, without loading data or restoring a checkpoint.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from l0jax import config as config_lib
from l0jax import graph as graph_lib
from l0jax import model, resnet, vgg


def compute_dtype(name: str) -> jnp.dtype:
  """The activations' dtype of a `config.compute_dtype`."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "bfloat16_matmuls": jnp.float32}[name]


class ParamKeys:
  """The keys flax's layers draw their initial values from (`rngs.params()`, the one call they
  make): the i-th is fold_in(key, i), as from nnx.Rngs(params=key), but counted in Python.

  nnx.Rngs counts in an array. Under jit, each update of that count asks the
  traced value for its sharding, and JAX answers with an error message that
  searches the whole program traced so far for the value's origin: quadratic
  in the network's size, and most of a GoogleNet's build time.
  """

  def __init__(self, key: jax.Array):
    self._key, self._count = key, 0

  def params(self) -> jax.Array:
    self._count += 1
    return jax.random.fold_in(self._key, self._count - 1)


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
          key: jax.Array) -> nnx.Module:
  """The configured network (`config.model` at its depth), its parameters drawn from `key`."""
  depth = config_lib.depth(config)
  network_class = {"googlenet": model.GoogleNet,
                   "resnet": functools.partial(resnet.ResNet, depth=depth),
                   "vgg": functools.partial(vgg.VGG, depth=depth)}[config.model]
  return network_class(
      num_classes, image_shape[-1], use_gate=config.use_gate,
      width_multiplier=config.width_multiplier, droprate_init=config.droprate_init,
      dtype=compute_dtype(config.compute_dtype),
      bfloat16_matmuls=config.compute_dtype == "bfloat16_matmuls", rngs=ParamKeys(key))


def channel_graph(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
                  num_classes: int) -> tuple[graph_lib.Graph, nnx.Module]:
  """The configured network's channel graph, checked against its (abstract) module."""
  height, width, _ = image_shape
  if height != width:
    raise ValueError(f"the cost accounting assumes square images, not {height}x{width}")
  abstract = nnx.eval_shape(lambda: build(config, image_shape, num_classes, jax.random.key(0)))
  graph = abstract.channel_graph(height)
  graph.check(abstract)
  return graph, abstract
