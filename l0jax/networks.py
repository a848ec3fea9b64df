"""The network a config describes: built, and its channel graph, from the config alone.

Training builds it here; whatever counts a run's costs (`analysis`) asks here
for its graph, without loading data or restoring a checkpoint. `Network` is
what a step function needs of it besides its arrays, here so that the
evaluator takes it without knowing the trainer.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from l0jax import compact_training, googlenet, graphs, kept_channels, resnet, run_config, vgg


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


def network_class(config: ml_collections.ConfigDict) -> Callable[..., nnx.Module]:
  """The configured network's class (`config.model` at its depth) with every option of the config
  bound: called with `(num_classes, in_channels, rngs=...)`."""
  depth = run_config.depth(config)
  cls = {"googlenet": functools.partial(googlenet.GoogleNet, gate_reduce=config.gate_reduce),
         "resnet": functools.partial(resnet.ResNet, depth=depth,
                                     gate_residual=config.gate_residual),
         "vgg": functools.partial(vgg.VGG, depth=depth)}[config.model]
  return functools.partial(
      cls, use_gate=config.use_gate, width_multiplier=config.width_multiplier,
      droprate_init=config.droprate_init, dtype=compute_dtype(config.compute_dtype),
      bfloat16_matmuls=config.compute_dtype == "bfloat16_matmuls")


def _build(cls: Callable[..., nnx.Module], image_shape: tuple[int, int, int], num_classes: int,
           key: jax.Array) -> nnx.Module:
  return cls(num_classes, image_shape[-1], rngs=ParamKeys(key))


def _channel_graph(cls: Callable[..., nnx.Module], image_shape: tuple[int, int, int],
                   num_classes: int) -> tuple[graphs.Graph, nnx.Module]:
  height, width, _ = image_shape
  if height != width:
    raise ValueError(f"the cost accounting assumes square images, not {height}x{width}")
  abstract = nnx.eval_shape(lambda: _build(cls, image_shape, num_classes, jax.random.key(0)))
  graph = abstract.channel_graph(height)
  graph.check(abstract)
  return graph, abstract


def channel_graph(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
                  num_classes: int) -> tuple[graphs.Graph, nnx.Module]:
  """The configured network's channel graph, checked against its (abstract) module."""
  return _channel_graph(network_class(config), image_shape, num_classes)


class Network(NamedTuple):
  """What the step functions need to know about the network, besides its arrays."""

  graphdef: nnx.GraphDef
  graph: graphs.Graph
  image_shape: tuple[int, int, int]
  num_classes: int
  dtype: Any
  # The training split's per-channel pixel mean and std, that every input is normalised by.
  mean: tuple[float, ...]
  std: tuple[float, ...]
  name: str  # what the console and the figures call it (`run_config.network_name`)

  def apply(self, params: nnx.State, batch_stats: nnx.State, images: jax.Array, *, train: bool,
            gate_key: jax.Array | None = None,
            kept: kept_channels.KeptChannels | None = None
            ) -> tuple[jax.Array, nnx.State, nnx.Module]:
    """Logits, the updated BN statistics and the module, as a pure function of the arrays.

    With `kept` (the gates fixed, training), only the kept channels are computed.
    """
    # copy=True: fresh Variables at this trace level, so BN may update them under grad.
    net = nnx.merge(self.graphdef, params, batch_stats, copy=True)
    logits = (net(images, train=train, gate_key=gate_key) if kept is None
              else compact_training.apply(net, self.graph, kept, images))
    return logits, nnx.state(net, nnx.BatchStat), net


def run_once(fn: Callable, *args) -> Any:
  """`jax.jit(fn)(*args)`, compiled at XLA's backend optimisation level 1.

  For programs that run once, such as initialisation: XLA's optimisations
  cost more compile time on its hundreds of random draws than they save in
  one run, and level 1 gives the same bits (tests/test_train.py).
  """
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 1})(*args)


def _describe(cls: Callable[..., nnx.Module], name: str, dtype: Any,
              image_shape: tuple[int, int, int], num_classes: int, mean: np.ndarray,
              std: np.ndarray) -> tuple[Network, nnx.Module]:
  graph, abstract = _channel_graph(cls, image_shape, num_classes)
  graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  network = Network(graphdef, graph, tuple(image_shape), num_classes, dtype,
                    tuple(map(float, mean)), tuple(map(float, std)), name)
  return network, abstract


def describe_network(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
                     num_classes: int, mean: np.ndarray,
                     std: np.ndarray) -> tuple[Network, nnx.Module]:
  """The network's static description, and its module of shapes only (no arrays drawn).

  `mean` and `std` are the per-channel statistics its inputs are normalised by.
  """
  return _describe(network_class(config), run_config.network_name(config),
                   compute_dtype(config.compute_dtype), image_shape, num_classes, mean, std)


def _initial_arrays(cls: Callable[..., nnx.Module], image_shape: tuple[int, int, int],
                    num_classes: int, seed: int) -> tuple[nnx.State, nnx.State]:
  """The network's initial (params, batch_stats), drawn from `seed`.

  Initialisation runs as one compiled program (`run_once`): op by op, each of its hundreds of
  operations would be compiled and dispatched on its own.
  """
  return run_once(
      lambda seed: nnx.split(_build(cls, image_shape, num_classes,
                                    jax.random.fold_in(jax.random.key(seed), 0)),
                             nnx.Param, nnx.BatchStat)[1:],
      np.uint32(seed))  # Unsigned: a seed may take all 32 bits (config.validate).


def create_network(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
                   num_classes: int, mean: np.ndarray,
                   std: np.ndarray) -> tuple[Network, nnx.State, nnx.State]:
  """The network's static description (`describe_network`) and its initial (params,
  batch_stats), drawn from `config.seed`; the config read once for both."""
  cls = network_class(config)
  network, _ = _describe(cls, run_config.network_name(config),
                         compute_dtype(config.compute_dtype), image_shape, num_classes, mean, std)
  return network, *_initial_arrays(cls, image_shape, num_classes, config.seed)
