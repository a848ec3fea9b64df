"""VGG (Simonyan & Zisserman 2015) in its CIFAR variant, with BN, optionally gated.

The convolutions of the paper's table 1 (VGG-11 is its configuration A,
VGG-16 its D), each 3x3 + BN + ReLU, in five stages that each end in a
max-pool 2x2/2; then, as CIFAR variants do, one dense layer to the classes in
place of the three of ImageNet. The head reads the global average of the
last map, which on 32x32 images is 1x1, so that the network also takes
smaller or odd sizes (a pool rounds up). Convs have no bias: BN follows.

A plain chain: every conv's output channels are read by the next layer alone,
so every conv is gated.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from l0jax import gates, graphs, layers, tracing

# Output channels of each stage's convs, by depth (the number of weight layers in the paper).
STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Max-pool 2x2, stride 2, on NHWC; an odd side gets a row or column of -inf (rounds up).

  A reshape and a max: XLA:CPU's select-and-scatter gradient of
  `reduce_window` is slow (see `layers.max_pool_3x3`).
  """
  n, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
  return jnp.max(x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c), axis=(2, 4))


class VGG(nnx.Module):
  """Five stages of 3x3 conv + BN + ReLU (each output optionally gated), each then max-pooled;
  global average pool, dense head. Called as `googlenet.GoogleNet` is."""

  def __init__(self, num_classes: int, in_channels: int, *, depth: int = 11,
               use_gate: bool = True, width_multiplier: float = 1.0,
               droprate_init: float = 0.5, dtype=jnp.float32, bfloat16_matmuls: bool = False,
               rngs: nnx.Rngs):
    self.in_channels, self.num_classes = in_channels, num_classes
    # 1-based indices of the convs after which a stage ends and the map is pooled.
    self.pool_after = tuple(itertools.accumulate(len(stage) for stage in STAGES[depth]))
    widths = [layers.scale_channels(c, width_multiplier) for stage in STAGES[depth] for c in stage]
    conv = functools.partial(layers.ConvBN, kernel=3, use_bias=False, dtype=dtype,
                             bfloat16_matmuls=bfloat16_matmuls, rngs=rngs)
    self.convs = nnx.List([conv(c_in, c) for c_in, c in zip([in_channels] + widths, widths)])
    self.gates = nnx.List(
        [gates.L0Gate(c, droprate_init, rngs=rngs) for c in widths] if use_gate else [])
    self.head = nnx.Linear(widths[-1], num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, gate_key: jax.Array | None = None) -> jax.Array:
    keys = (jax.random.split(gate_key, len(self.convs)) if gate_key is not None
            else [None] * len(self.convs))
    for i, (conv, key) in enumerate(zip(self.convs, keys)):
      x = conv(x, train)
      if self.gates:
        x = gates.gate_channels(x, self.gates[i].log_alpha[...], key)
      if i + 1 in self.pool_after:
        x = max_pool_2x2(x)
    x = jnp.mean(x, axis=(1, 2))
    return self.head(x).astype(jnp.float32)

  def channel_graph(self, image_hw: int) -> graphs.Graph:
    """The network's channel graph traced from its program, named as `stated_channel_graph`
    names it."""
    return tracing.traced_and_named(self, image_hw, _stated_names)

  def stated_channel_graph(self, image_hw: int) -> graphs.Graph:
    """The channel graph as stated by hand, what the traced one is tested against: layers
    `conv{i}` (1-based), each gated by a gate of its name; `pool{s}` after stage s."""
    nodes, gate_list, x = [], [], graphs.INPUT
    for i, conv_bn in enumerate(self.convs):
      name = f"conv{i + 1}"
      if self.gates:
        gate_list.append(graphs.Gate(name, conv_bn.conv.out_features,
                                     ("gates", i, "log_alpha")))
      nodes.append(graphs.Layer(
          name, (x,), conv_bn.conv.in_features, conv_bn.conv.out_features, kernel=3, padding=1,
          gate=name if self.gates else None, path=("convs", i, "conv"), bn=("convs", i, "bn"),
          bias=False))
      x = name
      if i + 1 in self.pool_after:
        x = f"pool{self.pool_after.index(i + 1) + 1}"
        nodes.append(graphs.Pool(x, (name,), window=2, stride=2, padding="SAME"))
    nodes += [graphs.Pool("global_pool", (x,), kind="mean"),
              graphs.Layer("head", ("global_pool",), self.head.in_features, self.num_classes,
                           dense=True, relu=False, path=("head",))]
    return graphs.Graph(image_hw, self.in_channels, tuple(nodes), tuple(gate_list))


def _stated_names(graph: graphs.Graph) -> dict[str, str]:
  """The traced graph's names (module paths, pools by number) as `stated_channel_graph` gives
  them."""
  names = {g.name: f"conv{g.path[1] + 1}" for g in graph.gates}
  names.update({l.name: f"conv{l.path[1] + 1}" if l.path[0] == "convs" else l.path[0]
                for l in graph.layers})
  pools = [n for n in graph.nodes if isinstance(n, graphs.Pool)]
  names.update({p.name: f"pool{i + 1}" for i, p in enumerate(pools[:-1])})
  names[pools[-1].name] = "global_pool"
  return names
