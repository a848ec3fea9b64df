"""Accuracy and cross-entropy on a held-out split, with the test-time gates.

As big_vision's evaluators/classification.py: an `Evaluator` is made once per
split and run (training makes one for the validation split and calls it every
epoch; --mode=test one for the test split), so the split is padded to whole
batches and put on the devices once. `eval_step` is the pure function of one
batch, compiled once per network and batch shape.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from l0jax import data, sharding
from l0jax.networks import Network


class EvalSet(NamedTuple):
  images: jax.Array  # uint8 [num_batches, batch, H, W, C]
  labels: jax.Array
  weights: jax.Array  # 0 for the padding that fills the last batch


def eval_batch_size(batch_size: int, num_examples: int) -> int:
  """`batch_size`, no larger than needed and a multiple of the device count."""
  n = jax.device_count()
  size = min(batch_size, -(-num_examples // n) * n)
  return -(-size // n) * n


def put_eval_set(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 mesh: jax.sharding.Mesh) -> EvalSet:
  """A split on the devices, padded to whole batches, each sharded over 'data'."""
  num_batches = -(-len(images) // batch_size)
  pad = num_batches * batch_size - len(images)
  weights = np.concatenate([np.ones(len(images), np.float32), np.zeros(pad, np.float32)])
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  over_data = NamedSharding(mesh, P(None, "data"))
  batched = lambda a: sharding.to_devices(a.reshape((num_batches, batch_size) + a.shape[1:]),
                                          over_data)
  return EvalSet(batched(images), batched(labels), batched(weights))


@functools.partial(jax.jit, static_argnums=0)
def eval_step(network: Network, params: nnx.State, batch_stats: nnx.State, images: jax.Array,
              labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(correct, cross-entropy) summed over one uint8 batch, padding weighted 0."""
  logits, _, _ = network.apply(params, batch_stats,
                               data.normalize(images, network.mean, network.std, network.dtype),
                               train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(weights * (logits.argmax(-1) == labels)), jnp.sum(weights * ce)


class Evaluator:
  """One split of `network`'s data, on the devices of `mesh` from construction on.

  Called with the network's arrays, it gives the split's accuracy and mean
  cross-entropy. One compiled call per batch, summed on the device: a loop
  over batches inside the compiled program runs slowly on CPU (as training
  steps do, see `batches.steps_per_call`).
  """

  def __init__(self, network: Network, images: np.ndarray, labels: np.ndarray,
               batch_size: int, mesh: jax.sharding.Mesh):
    self.network = network
    self.num_examples = len(images)
    self.eval_set = put_eval_set(images, labels, eval_batch_size(batch_size, len(images)), mesh)

  def __call__(self, params: nnx.State, batch_stats: nnx.State) -> dict[str, float]:
    images, labels, weights = self.eval_set
    correct = loss = 0.0
    for i in range(images.shape[0]):
      c, l = eval_step(self.network, params, batch_stats, images[i], labels[i], weights[i])
      correct, loss = correct + c, loss + l
    count = jnp.sum(weights)
    return {"accuracy": float(correct / count), "loss": float(loss / count)}
