"""The CIFAR-sized GoogleNet of the UvA deep learning tutorial 5, optionally gated; its graph.

The architecture is data (`INCEPTION_BLOCKS`), read by the network and by
its stated channel graph (`channel_graph`). The cost accounting and the
export read the graph traced from the network's program
(`GoogleNet.channel_graph`, `tracing`), named as the stated one names it.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from l0jax import gates, graphs, layers, tracing

STEM_CHANNELS = 64
BRANCHES = ("1x1", "3x3", "5x5", "pool")  # concatenation order of a block's outputs


class Inception(NamedTuple):
  """Channel counts of one inception block (its input is the previous block's output)."""

  red3: int
  red5: int
  out1: int
  out3: int
  out5: int
  out_pool: int

  @property
  def outputs(self) -> tuple[int, int, int, int]:
    return (self.out1, self.out3, self.out5, self.out_pool)

  def scaled(self, width_multiplier: float) -> "Inception":
    return Inception(*(layers.scale_channels(c, width_multiplier) for c in self))


INCEPTION_BLOCKS = (
    Inception(32, 16, 16, 32, 8, 8),
    Inception(32, 16, 24, 48, 12, 12),
    # max-pool 3x3/2
    Inception(32, 16, 24, 48, 12, 12),
    Inception(32, 16, 16, 48, 16, 16),
    Inception(32, 16, 16, 48, 16, 16),
    Inception(32, 16, 32, 48, 24, 24),
    # max-pool 3x3/2
    Inception(48, 16, 32, 64, 16, 16),
    Inception(48, 16, 32, 64, 16, 16),
)
POOL_AFTER = (1, 5)  # 0-based indices of the blocks followed by a max-pool 3x3/2


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The channel counts of a GoogleNet at one width."""

  stem: int
  blocks: tuple[Inception, ...]

  @classmethod
  def at_width(cls, width_multiplier: float) -> "Architecture":
    return cls(layers.scale_channels(STEM_CHANNELS, width_multiplier),
               tuple(b.scaled(width_multiplier) for b in INCEPTION_BLOCKS))

  def block_inputs(self) -> tuple[int, ...]:
    """Input channels of each block: the stem's, then each block's concatenated outputs."""
    return (self.stem,) + tuple(sum(b.outputs) for b in self.blocks[:-1])

  @property
  def head_inputs(self) -> int:
    return sum(self.blocks[-1].outputs)


REDUCED = ("3x3", "5x5")  # the branches whose 1x1 reduce layer `gate_reduce` gates


class InceptionBlock(nnx.Module):
  """Four branches concatenated on channels, each output optionally gated.

  The four branches' gates multiply the concatenation at once, from one noise
  draw: one elementwise pass over the block's output instead of four. With
  `gate_reduce`, the 3x3 and 5x5 branches' 1x1 reduce layers are gated too,
  so that L0 can also narrow a branch inside.
  """

  def __init__(self, c_in: int, spec: Inception, *, use_gate: bool, droprate_init: float,
               dtype, bfloat16_matmuls: bool, rngs: nnx.Rngs, gate_reduce: bool = False):
    conv = functools.partial(layers.ConvBN, dtype=dtype, bfloat16_matmuls=bfloat16_matmuls,
                             rngs=rngs)
    self.branch1 = conv(c_in, spec.out1, 1)
    self.branch3_reduce = conv(c_in, spec.red3, 1)
    self.branch3 = conv(spec.red3, spec.out3, 3)
    self.branch5_reduce = conv(c_in, spec.red5, 1)
    self.branch5 = conv(spec.red5, spec.out5, 5)
    self.branch_pool = conv(c_in, spec.out_pool, 1)
    self.gates = nnx.List(
        [gates.L0Gate(c, droprate_init, rngs=rngs) for c in spec.outputs] if use_gate else [])
    self.reduce_gates = nnx.List(
        [gates.L0Gate(c, droprate_init, rngs=rngs) for c in (spec.red3, spec.red5)]
        if use_gate and gate_reduce else [])

  def __call__(self, x: jax.Array, train: bool, gate_key: jax.Array | None) -> jax.Array:
    # The reduce gates' own draws: the outputs' gates keep `gate_key`'s, as without them.
    reduce_keys = (jax.random.split(jax.random.fold_in(gate_key, 1), 2)
                   if self.reduce_gates and gate_key is not None else [None, None])

    def reduced(j: int, reduce: layers.ConvBN) -> jax.Array:
      y = reduce(x, train)
      if not self.reduce_gates:
        return y
      return gates.gate_channels(y, self.reduce_gates[j].log_alpha[...], reduce_keys[j])

    outputs = [
        self.branch1(x, train),
        self.branch3(reduced(0, self.branch3_reduce), train),
        self.branch5(reduced(1, self.branch5_reduce), train),
        self.branch_pool(layers.max_pool_3x3(x, 1), train),
    ]
    x = jnp.concatenate(outputs, axis=-1)
    if not self.gates:
      return x
    return gates.gate_channels(
        x, jnp.concatenate([gate.log_alpha[...] for gate in self.gates]), gate_key)


class GoogleNet(nnx.Module):
  """Stem, eight inception blocks with two max-pools, global average pool, dense head.

  `__call__(x, train=True, gate_key=k)` draws training gates from `k` (one
  gate per example and channel); without a key the test-time gates are used,
  in training too when the gates are fixed (`train_gates=False`).
  Activations are `dtype`; `bfloat16_matmuls` runs the convolutions as in `ConvBN`.
  """

  def __init__(self, num_classes: int, in_channels: int, *, use_gate: bool = True,
               gate_reduce: bool = False, width_multiplier: float = 1.0,
               droprate_init: float = 0.5, dtype=jnp.float32, bfloat16_matmuls: bool = False,
               rngs: nnx.Rngs):
    arch = Architecture.at_width(width_multiplier)
    self.arch, self.in_channels, self.num_classes = arch, in_channels, num_classes
    self.use_gate, self.gate_reduce = use_gate, gate_reduce
    self.stem = layers.ConvBN(in_channels, arch.stem, 3, dtype=dtype,
                              bfloat16_matmuls=bfloat16_matmuls, rngs=rngs)
    self.blocks = nnx.List([
        InceptionBlock(c_in, spec, use_gate=use_gate, gate_reduce=gate_reduce,
                       droprate_init=droprate_init, dtype=dtype,
                       bfloat16_matmuls=bfloat16_matmuls, rngs=rngs)
        for c_in, spec in zip(arch.block_inputs(), arch.blocks)
    ])
    self.head = nnx.Linear(arch.head_inputs, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, gate_key: jax.Array | None = None) -> jax.Array:
    x = self.stem(x, train)
    keys = (jax.random.split(gate_key, len(self.blocks)) if gate_key is not None
            else [None] * len(self.blocks))
    for i, (block, key) in enumerate(zip(self.blocks, keys)):
      x = block(x, train, key)
      if i in POOL_AFTER:
        x = layers.max_pool_3x3(x, 2)
    x = jnp.mean(x, axis=(1, 2))
    return self.head(x).astype(jnp.float32)

  def channel_graph(self, image_hw: int) -> graphs.Graph:
    """The network's channel graph traced from its program, named as `channel_graph` states it."""
    return tracing.traced_and_named(self, image_hw, _stated_names)

  def stated_channel_graph(self, image_hw: int) -> graphs.Graph:
    return channel_graph(self.arch, use_gate=self.use_gate, gate_reduce=self.gate_reduce,
                         image_hw=image_hw, in_channels=self.in_channels,
                         num_classes=self.num_classes)


def _stated_names(graph: graphs.Graph) -> dict[str, str]:
  """The traced graph's names (module paths, pools by number) as `channel_graph` gives them."""
  block = lambda path: f"block{path[1] + 1}"
  names = {g.name: (f"{block(g.path)}/{BRANCHES[g.path[3]]}" if g.path[2] == "gates"
                    else f"{block(g.path)}/{REDUCED[g.path[3]]}_reduce") for g in graph.gates}
  for layer in graph.layers:
    names[layer.name] = (f"{block(layer.path)}/{layer.path[2]}" if layer.path[0] == "blocks"
                         else layer.path[0])
  for pool in (n for n in graph.nodes if isinstance(n, graphs.Pool)):
    if pool.kind == "mean":
      names[pool.name] = "global_pool"
    elif pool.stride == 1:  # a block's pool branch, named for the block that reads it
      reader = next(l for l in graph.layers if pool.name in l.inputs)
      names[pool.name] = f"{block(reader.path)}/pool"
    else:  # the max-pool after a block, named for that block
      names[pool.name] = f"{names[pool.inputs[0]].split('/')[0]}/max_pool"
  return names


def channel_graph(arch: Architecture, *, use_gate: bool, image_hw: int, in_channels: int,
                  num_classes: int, gate_reduce: bool = False) -> graphs.Graph:
  """The GoogleNet's channel graph as stated by hand: its layers' names and paths, its gates'
  names; what the traced graph is tested against, and the graph of an architecture alone.

  A gate is named for the branch output it controls, `block{i}/{branch}`
  (1-based, `BRANCHES`), as the run's history has always recorded them; with
  `gate_reduce` a reduce layer's is `block{i}/{branch}_reduce`.
  """
  def conv_bn(name, inputs, c_in, c_out, kernel, path, gate=None):
    return graphs.Layer(name, inputs, c_in, c_out, kernel, padding=kernel // 2,
                        gate=gate if use_gate else None,
                        path=(*path, "conv"), bn=(*path, "bn"))

  nodes, gate_list = [conv_bn("stem", (graphs.INPUT,), in_channels, arch.stem, 3, ("stem",))], []
  x, c_in = ("stem",), arch.stem
  for i, spec in enumerate(arch.blocks):
    block, path = f"block{i + 1}", ("blocks", i)
    names = {b: f"{block}/{b}" for b in BRANCHES}
    reduce_names = {b: f"{block}/{b}_reduce" if gate_reduce else None for b in REDUCED}
    if use_gate and gate_reduce:  # first, as the program reads them
      gate_list += [graphs.Gate(reduce_names[b], c, (*path, "reduce_gates", j, "log_alpha"))
                    for j, (b, c) in enumerate(zip(REDUCED, (spec.red3, spec.red5)))]
    if use_gate:
      gate_list += [graphs.Gate(names[b], c, (*path, "gates", j, "log_alpha"))
                    for j, (b, c) in enumerate(zip(BRANCHES, spec.outputs))]
    layer = lambda conv, *args, gate=None: conv_bn(f"{block}/{conv}", *args, (*path, conv), gate)
    nodes += [
        layer("branch1", x, c_in, spec.out1, 1, gate=names["1x1"]),
        layer("branch3_reduce", x, c_in, spec.red3, 1, gate=reduce_names["3x3"]),
        layer("branch3", (f"{block}/branch3_reduce",), spec.red3, spec.out3, 3,
              gate=names["3x3"]),
        layer("branch5_reduce", x, c_in, spec.red5, 1, gate=reduce_names["5x5"]),
        layer("branch5", (f"{block}/branch5_reduce",), spec.red5, spec.out5, 5,
              gate=names["5x5"]),
        graphs.Pool(f"{block}/pool", x),
        layer("branch_pool", (f"{block}/pool",), c_in, spec.out_pool, 1, gate=names["pool"]),
    ]
    x = tuple(f"{block}/{conv}" for conv in ("branch1", "branch3", "branch5", "branch_pool"))
    c_in = sum(spec.outputs)
    if i in POOL_AFTER:
      nodes.append(graphs.Pool(f"{block}/max_pool", x, stride=2))
      x = (f"{block}/max_pool",)
  nodes += [graphs.Pool("global_pool", x, kind="mean"),
            graphs.Layer("head", ("global_pool",), c_in, num_classes, dense=True, relu=False,
                         path=("head",))]
  return graphs.Graph(image_hw, in_channels, tuple(nodes), tuple(gate_list))
