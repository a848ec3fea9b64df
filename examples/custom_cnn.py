r"""Pruning an ordinary Flax NNX CNN with l0jax: gates put in, costs, a penalty, a compact export.

    python examples/custom_cnn.py --export_dir=/tmp/custom_cnn_export

`SmallCNN` is a plain NNX module, with nothing of l0jax in it.
`l0jax.gate_network` traces its channel graph from its program and puts an
L0 gate on the output channels of every layer whose channels are its own
(each conv here; the head's are the logits); the gated network's traced
graph is what the penalty, the cost table and the export read. The
script trains it a few steps on synthetic images with cross-entropy + lambda
x the expected kept fraction of its MACs, prints the cost table of what is
kept, and exports the compact network (kept channels only, BN and gates
folded), which it reloads and checks against the gated network.

The other examples reuse its steps: `examples/resnet18.py` prunes a
ResNet-18 to a MAC budget; `examples/stated_graph.py` prunes a network that
carries its own gates and a graph stated by hand, the route for what tracing
cannot follow.
`tests/test_examples.py` runs them at a tiny size.
"""

import argparse
import functools
import os
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import l0jax

# The L0 term added to the cross-entropy: (network, arrays that change between steps) -> scalar.
L0Term = Callable[[nnx.Module, Any], jax.Array]


class SmallCNN(nnx.Module):
  """stem conv -> 1x1 and 3x3 conv branches, concatenated -> max-pool -> conv -> mean -> dense."""

  def __init__(self, width: int = 8, in_channels: int = 3, num_classes: int = 10, *,
               rngs: nnx.Rngs):
    conv = lambda c_in, c_out, k=3: nnx.Conv(c_in, c_out, (k, k), rngs=rngs)
    norm = lambda c: nnx.BatchNorm(c, rngs=rngs)
    self.stem, self.stem_bn = conv(in_channels, width), norm(width)
    self.branch1, self.branch1_bn = conv(width, width, 1), norm(width)
    self.branch3, self.branch3_bn = conv(width, width), norm(width)
    self.conv, self.conv_bn = conv(2 * width, 4 * width), norm(4 * width)
    self.head = nnx.Linear(4 * width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    layer = lambda conv, bn, y: nnx.relu(bn(conv(y), use_running_average=not train))
    x = layer(self.stem, self.stem_bn, x)
    x = jnp.concatenate([layer(self.branch1, self.branch1_bn, x),
                         layer(self.branch3, self.branch3_bn, x)], axis=-1)
    x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = layer(self.conv, self.conv_bn, x)
    return self.head(jnp.mean(x, axis=(1, 2)))


class Data(NamedTuple):
  """Labelled images, and the per-channel mean and std that normalise them."""

  images: np.ndarray  # uint8 NHWC
  labels: np.ndarray
  mean: np.ndarray
  std: np.ndarray

  @property
  def x(self) -> np.ndarray:
    """The images normalised, as the network reads them."""
    return ((self.images - self.mean) / self.std).astype(np.float32)


def synthetic_data(num: int, image_hw: int, channels: int, num_classes: int, seed: int) -> Data:
  """Random images whose label is their brightness, in `num_classes` bins of equal counts:
  something a CNN can learn from the pixels."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num, image_hw, image_hw, channels), dtype=np.uint8)
  brightness = images.reshape(num, -1).mean(1)
  labels = np.argsort(np.argsort(brightness)) * num_classes // num
  pixels = images.reshape(-1, channels)
  return Data(images, labels, pixels.mean(0), pixels.std(0))


@functools.partial(nnx.jit, static_argnames="l0_term")
def train_step(net: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, labels: jax.Array,
               gate_key: jax.Array | None, l0_term: L0Term, l0_args: Any) -> jax.Array:
  """One Adam step on cross-entropy + `l0_term(net, l0_args)`, for the variables the
  optimizer updates; gates drawn from `gate_key`, or the test-time ones without it."""
  def loss_fn(net):
    logits = net(x, train=True, gate_key=gate_key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return ce + l0_term(net, l0_args)

  loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, optimizer.wrt))(net)
  optimizer.update(net, grads)
  return loss


def export_and_check(net: nnx.Module, graph: l0jax.Graph, data: Data,
                     export_dir: str | os.PathLike) -> dict[str, Any]:
  """Prints the cost table, exports the compact network, and checks that the reloaded export
  gives `net`'s test-time logits; returns the export's metrics."""
  print(l0jax.format_table(l0jax.costs(net, graph)))
  metrics = l0jax.save_export(net, graph, export_dir, data.images, data.mean, data.std)
  logits = l0jax.load_export(export_dir)(data.images)
  np.testing.assert_allclose(logits, net(data.x, train=False), rtol=1e-4, atol=1e-4)
  print(f"{export_dir}: {metrics['params_compact']:,} parameters, largest logit difference "
        f"{metrics['max_abs_logit_diff']:.2e}")
  return metrics


def prune_with_penalty(net: nnx.Module, graph: l0jax.Graph, data: Data,
                       export_dir: str | os.PathLike, *, steps: int, lambda_l0: float
                       ) -> dict[str, Any]:
  """Trains `net` with cross-entropy + `lambda_l0` x the expected kept fraction of its MACs,
  then `export_and_check`s it."""
  penalty = lambda net, lambda_l0: lambda_l0 * l0jax.penalty(net, graph, "macs")
  optimizer = nnx.Optimizer(net, optax.adam(0.05), wrt=nnx.Param)
  x = data.x
  for step in range(steps):
    train_step(net, optimizer, x, data.labels, jax.random.key(step), penalty, lambda_l0)
  return export_and_check(net, graph, data, export_dir)


def main(export_dir: str, *, width: int = 8, image_hw: int = 16, steps: int = 60,
         lambda_l0: float = 0.5, seed: int = 0) -> dict[str, Any]:
  """Gates, trains, reports and exports `SmallCNN`; returns the export's metrics."""
  data = synthetic_data(64, image_hw, 3, 10, seed)
  gated = l0jax.gate_network(SmallCNN(width, rngs=nnx.Rngs(seed)), data.x,
                             rngs=nnx.Rngs(seed + 1))
  graph = l0jax.trace_graph(gated, data.x)
  return prune_with_penalty(gated, graph, data, export_dir, steps=steps, lambda_l0=lambda_l0)


def run(main: Callable[..., Any], parser: argparse.ArgumentParser) -> None:
  """`main(**flags)`; a network or flag l0jax refuses ends the script with its one line."""
  try:
    main(**vars(parser.parse_args()))
  except l0jax.UserError as e:
    sys.exit(f"{parser.prog}: {e}")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--export_dir", required=True)
  run(main, parser)
