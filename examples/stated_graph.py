r"""Pruning a network that carries its own L0 gates and a channel graph stated by hand.

    python examples/stated_graph.py --export_dir=/tmp/stated_graph_export

The route for a network that tracing cannot follow (what it refuses: the
README's Python API section), or whose layers you would name your own way.
`l0jax.gate_network` traces the network to gate it, so such a network is
written with its gates: `SmallResNet` is an ordinary NNX module with an
`l0jax.L0Gate` on the output channels of the layers to prune (applied with
`l0jax.gate_channels`), and `channel_graph`, which states its layers, what
each reads and which gate controls its outputs (see `l0jax.graphs`).
`graph.check(net)` holds the statement against the module. The channels that
the residual add ties stay ungated; the gates sit inside the block and on the
last conv. The rest is `examples/custom_cnn.py`'s: a few training steps with
the MACs penalty, the cost table, the compact export, reloaded and checked.
`SmallResNet` itself traces, to this very graph (`tests/test_tracing.py`):
it shows the route on a network small enough to read.
"""

import argparse
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import l0jax
from custom_cnn import prune_with_penalty, run, synthetic_data
from l0jax import INPUT, Add, Gate, Graph, Layer, Pad, Pool


class SmallResNet(nnx.Module):
  """stem conv -> residual block (stride 2, option-A shortcut) -> gated conv -> pool -> dense."""

  def __init__(self, width: int = 8, in_channels: int = 3, num_classes: int = 10, *,
               rngs: nnx.Rngs):
    self.width, self.in_channels, self.num_classes = width, in_channels, num_classes
    conv = lambda c_in, c_out, stride=1: nnx.Conv(c_in, c_out, (3, 3), strides=stride, rngs=rngs)
    self.stem, self.stem_bn = conv(in_channels, width), nnx.BatchNorm(width, rngs=rngs)
    self.conv_a, self.conv_a_bn = conv(width, 2 * width, 2), nnx.BatchNorm(2 * width, rngs=rngs)
    self.gate_a = l0jax.L0Gate(2 * width, droprate_init=0.5, rngs=rngs)
    self.conv_b, self.conv_b_bn = conv(2 * width, 2 * width), nnx.BatchNorm(2 * width, rngs=rngs)
    self.conv_c, self.conv_c_bn = conv(2 * width, 4 * width), nnx.BatchNorm(4 * width, rngs=rngs)
    self.gate_c = l0jax.L0Gate(4 * width, droprate_init=0.5, rngs=rngs)
    self.head = nnx.Linear(4 * width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, gate_key: jax.Array | None = None):
    """Training gates drawn from `gate_key`; without one, the test-time gates."""
    key_a, key_c = jax.random.split(gate_key) if gate_key is not None else (None, None)
    bn = lambda norm, y: norm(y, use_running_average=not train)
    x = nnx.relu(bn(self.stem_bn, self.stem(x)))
    y = nnx.relu(bn(self.conv_a_bn, self.conv_a(x)))
    y = l0jax.gate_channels(y, self.gate_a.log_alpha[...], key_a)
    y = bn(self.conv_b_bn, self.conv_b(y))
    shortcut = jnp.pad(x[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (self.width // 2,) * 2))
    x = nnx.relu(y + shortcut)
    x = nnx.relu(bn(self.conv_c_bn, self.conv_c(x)))
    x = l0jax.gate_channels(x, self.gate_c.log_alpha[...], key_c)
    x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    return self.head(jnp.mean(x, axis=(1, 2)))

  def channel_graph(self, image_hw: int) -> Graph:
    w = self.width
    conv = lambda name, inputs, c_in, c_out, **kw: Layer(
        name, inputs, c_in, c_out, kernel=3, path=(name,), bn=(f"{name}_bn",), **kw)
    return Graph(image_hw, self.in_channels, gates=(
        Gate("block/a", 2 * w, ("gate_a", "log_alpha")),
        Gate("conv_c", 4 * w, ("gate_c", "log_alpha"))), nodes=(
        conv("stem", (INPUT,), self.in_channels, w),
        conv("conv_a", ("stem",), w, 2 * w, stride=2, gate="block/a"),
        conv("conv_b", ("conv_a",), 2 * w, 2 * w, relu=False),
        Pad("shortcut", ("stem",), stride=2, before=w // 2, after=w // 2),
        Add("block", ("conv_b", "shortcut")),
        conv("conv_c", ("block",), 2 * w, 4 * w, gate="conv_c"),
        Pool("pool", ("conv_c",), window=2, stride=2, padding=0),
        Pool("global_pool", ("pool",), kind="mean"),
        Layer("head", ("global_pool",), 4 * w, self.num_classes, dense=True, relu=False,
              path=("head",))))


def main(export_dir: str, *, width: int = 8, image_hw: int = 16, steps: int = 60,
         lambda_l0: float = 2.0, seed: int = 0) -> dict[str, Any]:
  """Trains, reports and exports `SmallResNet`; returns the export's metrics."""
  net = SmallResNet(width, rngs=nnx.Rngs(seed))
  graph = net.channel_graph(image_hw)
  graph.check(net)  # A graph that does not match the module: l0jax.GraphError, naming the layer.
  data = synthetic_data(64, image_hw, 3, 10, seed)
  return prune_with_penalty(net, graph, data, export_dir, steps=steps, lambda_l0=lambda_l0)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--export_dir", required=True)
  run(main, parser)
