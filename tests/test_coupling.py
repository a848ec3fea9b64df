"""Channels tied by residual adds, found from the graph: one group each, in network order."""

import jax
import jax.numpy as jnp
from flax import nnx

from l0jax import coupling, googlenet, resnet, tracing
from l0jax.graphs import INPUT, Add, Graph, Layer, Pad, Pool


def groups_of(net, hw=32):
  graph = tracing.trace_graph(net, jax.ShapeDtypeStruct((2, hw, hw, 3), jnp.float32))
  return coupling.channel_groups(graph)


def test_a_resnets_adds_tie_each_stage_width_to_the_stem_and_the_later_stages():
  net = nnx.eval_shape(lambda: resnet.ResNet(10, 3, depth=20, rngs=nnx.Rngs(0)))
  groups = groups_of(net)
  conv2 = lambda s: [f"stages/{s}/{b}/conv2/conv" for b in range(3)]
  tied = [g for g in groups if len(g.members) > 1]
  assert [(g.size, [m[0] for m in g.members]) for g in tied] == [
      (16, ["stem/conv", *conv2(0), *conv2(1), *conv2(2)]),
      (32 - 16, conv2(1) + conv2(2)),
      (64 - 32, conv2(2)),
  ]
  assert [m[1:] for m in tied[1].members] == [(16, 32)] * 6
  # Every block's inner channels, the input's and the logits are groups of their own.
  assert len(groups) == len(tied) + 9 + 2
  assert groups[0] == coupling.ChannelGroup(((INPUT, 0, 3),))


def test_a_pad_ties_its_input_to_the_middle_of_the_add_and_its_zeros_to_nothing():
  graph = Graph(8, 3, nodes=(
      Layer("stem", (INPUT,), 3, 4, kernel=3, path=("stem",)),
      Layer("conv", ("stem",), 4, 8, kernel=3, stride=2, relu=False, path=("conv",)),
      Pad("shortcut", ("stem",), stride=2, before=2, after=2),
      Add("add", ("conv", "shortcut")),
      Pool("mean", ("add",), kind="mean"),
      Layer("head", ("mean",), 8, 10, dense=True, relu=False, path=("head",))))
  assert coupling.channel_groups(graph) == (
      coupling.ChannelGroup(((INPUT, 0, 3),)),
      coupling.ChannelGroup((("stem", 0, 4), ("conv", 2, 6))),
      coupling.ChannelGroup((("conv", 0, 2),)),
      coupling.ChannelGroup((("conv", 6, 8),)),
      coupling.ChannelGroup((("head", 0, 10),)))


def test_a_network_without_adds_has_one_group_per_layer():
  net = nnx.eval_shape(lambda: googlenet.GoogleNet(10, 3, width_multiplier=0.25, rngs=nnx.Rngs(0)))
  graph = net.channel_graph(32)
  groups = coupling.channel_groups(graph)
  assert [g.members for g in groups] == [((INPUT, 0, 3),)] + [
      ((l.name, 0, l.c_out),) for l in graph.layers]
