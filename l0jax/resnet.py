"""The CIFAR ResNets of He, Zhang, Ren & Sun 2016, section 4.2, optionally gated.

Depth 6n + 2: a 3x3 stem of 16 channels, three stages of n basic blocks of
16, 32 and 64 channels (the first block of stages 2 and 3 halves the map),
global average pool, dense head. The shortcut is the paper's option A: the
identity, and where a block changes the shape, its input subsampled by 2 and
padded with zero channels after its own (no parameters).

Gates sit on each block's inner channels, the first conv's outputs, which the
block's second conv alone reads. When all of a block's gates close, the block
adds a constant (its second conv's BN of zero inputs) to its input, then the
ReLU. A block's output channels are tied by the residual adds to the same
channel of every block of its stage, of the later stages (through the padded
shortcuts) and of the stem: with `gate_residual`, one gate per stage width
controls them, the channels each stage adds to the one before (`width_gates`;
stage 1's are the stem's), shared by the stem and every block's second conv
that makes them (after its BN, before the add). Each call draws each width
gate once, so all of its members multiply a channel by the same value.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from l0jax import gates, graphs, layers, tracing
from l0jax.errors import UserError

STAGE_CHANNELS = (16, 32, 64)


def blocks_per_stage(depth: int) -> int:
  """n of depth = 6n + 2."""
  return (depth - 2) // 6


def shortcut(x: jax.Array, c_out: int, stride: int) -> jax.Array:
  """Option A: `x` subsampled by `stride` (pixel stride * j), zero channels added up to c_out."""
  x = x[:, ::stride, ::stride]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, c_out - x.shape[-1])))


class BasicBlock(nnx.Module):
  """conv3x3 + BN + ReLU, its outputs optionally gated; conv3x3 + BN; + shortcut; ReLU."""

  def __init__(self, c_in: int, c_out: int, stride: int, *, use_gate: bool, droprate_init: float,
               dtype, bfloat16_matmuls: bool, rngs: nnx.Rngs):
    conv = functools.partial(layers.ConvBN, kernel=3, use_bias=False, dtype=dtype,
                             bfloat16_matmuls=bfloat16_matmuls, rngs=rngs)
    self.conv1 = conv(c_in, c_out, stride=stride)
    self.conv2 = conv(c_out, c_out, relu=False)
    self.gate = gates.L0Gate(c_out, droprate_init, rngs=rngs) if use_gate else None
    self.stride = stride

  def __call__(self, x: jax.Array, train: bool, gate_key: jax.Array | None,
               width_gates: jax.Array | None = None) -> jax.Array:
    y = self.conv1(x, train)
    if self.gate is not None:
      y = gates.gate_channels(y, self.gate.log_alpha[...], gate_key)
    y = self.conv2(y, train)
    if width_gates is not None:
      y = gates.scale_channels(y, width_gates)
    return nnx.relu(y + shortcut(x, y.shape[-1], self.stride))


class ResNet(nnx.Module):
  """Stem, three stages of basic blocks, global average pool, dense head.

  Called as `googlenet.GoogleNet` is: `gate_key` draws training gates, none gives
  the test-time ones; `dtype` and `bfloat16_matmuls` as there. `gate_residual`
  adds the width gates (see the module docstring).
  """

  def __init__(self, num_classes: int, in_channels: int, *, depth: int = 20,
               use_gate: bool = True, gate_residual: bool = False,
               width_multiplier: float = 1.0, droprate_init: float = 0.5, dtype=jnp.float32,
               bfloat16_matmuls: bool = False, rngs: nnx.Rngs):
    widths = [layers.scale_channels(c, width_multiplier) for c in STAGE_CHANNELS]
    added = [b - a for a, b in zip([0] + widths, widths)]
    if gate_residual and min(added) < 1:
      raise UserError(f"gate_residual gates the channels each stage adds, but width_multiplier="
                      f"{width_multiplier} gives stage widths {widths}")
    self.in_channels, self.num_classes = in_channels, num_classes
    self.stem = layers.ConvBN(in_channels, widths[0], 3, use_bias=False, dtype=dtype,
                              bfloat16_matmuls=bfloat16_matmuls, rngs=rngs)
    block = functools.partial(BasicBlock, use_gate=use_gate, droprate_init=droprate_init,
                              dtype=dtype, bfloat16_matmuls=bfloat16_matmuls, rngs=rngs)
    n = blocks_per_stage(depth)
    c_ins = [widths[0]] + widths[:-1]
    self.stages = nnx.List([
        nnx.List([block(c_in if b == 0 else c, c, 2 if s > 0 and b == 0 else 1)
                  for b in range(n)])
        for s, (c_in, c) in enumerate(zip(c_ins, widths))
    ])
    self.head = nnx.Linear(widths[-1], num_classes, dtype=dtype, rngs=rngs)
    self.width_gates = nnx.List(
        [gates.L0Gate(size, droprate_init, rngs=rngs) for size in added] if gate_residual else [])

  def __call__(self, x: jax.Array, *, train: bool, gate_key: jax.Array | None = None) -> jax.Array:
    x = self.stem(x, train)
    blocks = [(s, block) for s, stage in enumerate(self.stages) for block in stage]
    n = len(blocks) + len(self.width_gates)
    keys = jax.random.split(gate_key, n) if gate_key is not None else [None] * n
    added = [gates.gate_values(g.log_alpha[...], key, x.shape[0])
             for g, key in zip(self.width_gates, keys[len(blocks):])]
    stage_gates = [jnp.concatenate(added[:s + 1], axis=-1) if added else None
                   for s in range(len(self.stages))]
    if added:
      x = gates.scale_channels(x, stage_gates[0])
    for (s, block), key in zip(blocks, keys):
      x = block(x, train, key, stage_gates[s])
    x = jnp.mean(x, axis=(1, 2))
    return self.head(x).astype(jnp.float32)

  def channel_graph(self, image_hw: int) -> graphs.Graph:
    """The network's channel graph traced from its program, named as `stated_channel_graph`
    names it."""
    return tracing.traced_and_named(self, image_hw, _stated_names)

  def stated_channel_graph(self, image_hw: int) -> graphs.Graph:
    """The channel graph as stated by hand, what the traced one is tested against. A block is
    `stage{s}/block{b}` (1-based): its layers `.../conv1` and `.../conv2`, its output
    `.../add`; its gate is named for the block, a width gate `stage{s}/width`."""
    def conv_bn(name, inputs, conv_bn_module, path, gate=None):
      conv = conv_bn_module.conv
      return graphs.Layer(name, inputs, conv.in_features, conv.out_features, kernel=3,
                          stride=conv.strides, padding=1, gate=gate, relu=conv_bn_module.relu,
                          path=(*path, "conv"), bn=(*path, "bn"), bias=False)

    widths = [graphs.Gate(f"stage{s + 1}/width", g.log_alpha.shape[0],
                          ("width_gates", s, "log_alpha"))
              for s, g in enumerate(self.width_gates)]
    width_gate = lambda s: (tuple(g.name for g in widths[:s + 1]) if s else widths[0].name
                            ) if widths else None
    nodes = [conv_bn("stem", (graphs.INPUT,), self.stem, ("stem",), width_gate(0))]
    gate_list = widths[:1]  # each in the order the network first uses it, as traced
    x = "stem"
    for s, stage in enumerate(self.stages):
      for b, block in enumerate(stage):
        name, path = f"stage{s + 1}/block{b + 1}", ("stages", s, b)
        if block.gate is not None:
          gate_list.append(graphs.Gate(name, block.gate.log_alpha.shape[0],
                                       (*path, "gate", "log_alpha")))
        if widths and s and not b:
          gate_list.append(widths[s])
        nodes += [
            conv_bn(f"{name}/conv1", (x,), block.conv1, (*path, "conv1"),
                    gate=name if block.gate is not None else None),
            conv_bn(f"{name}/conv2", (f"{name}/conv1",), block.conv2, (*path, "conv2"),
                    gate=width_gate(s)),
        ]
        shortcut = x
        c_in, c_out = block.conv1.conv.in_features, block.conv2.conv.out_features
        if block.stride != 1 or c_in != c_out:
          shortcut = f"{name}/shortcut"
          nodes.append(graphs.Pad(shortcut, (x,), stride=block.stride, after=c_out - c_in))
        x = f"{name}/add"
        nodes.append(graphs.Add(x, (f"{name}/conv2", shortcut)))
    nodes += [graphs.Pool("global_pool", (x,), kind="mean"),
              graphs.Layer("head", ("global_pool",), self.head.in_features, self.num_classes,
                           dense=True, relu=False, path=("head",))]
    return graphs.Graph(image_hw, self.in_channels, tuple(nodes), tuple(gate_list))


def _stated_names(graph: graphs.Graph) -> dict[str, str]:
  """The traced graph's names (module paths, adds by number) as `stated_channel_graph` gives
  them."""
  block = lambda path: f"stage{path[1] + 1}/block{path[2] + 1}"
  names = {g.name: (f"stage{g.path[1] + 1}/width" if g.path[0] == "width_gates"
                    else block(g.path)) for g in graph.gates}
  by_name = {n.name: n for n in graph.nodes}
  for layer in graph.layers:
    names[layer.name] = (f"{block(layer.path)}/{layer.path[3]}" if layer.path[0] == "stages"
                         else layer.path[0])
  for node in graph.nodes:
    if isinstance(node, graphs.Add):  # a block's: its second conv plus its shortcut
      conv2, shortcut = node.inputs
      names[node.name] = f"{block(by_name[conv2].path)}/add"
      if isinstance(by_name[shortcut], graphs.Pad):
        names[shortcut] = f"{block(by_name[conv2].path)}/shortcut"
    elif isinstance(node, graphs.Pool):
      names[node.name] = "global_pool"
  return names
