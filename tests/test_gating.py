"""Gates put into an unmodified NNX CNN: where its channels are its own, trainable, exportable."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import l0jax
from l0jax import accounting, export, gates, gating, resnet, tracing, vgg
from l0jax.graphs import GraphError


class Plain(nnx.Module):
  """An ordinary CNN: stem, a residual block, a max-pool, a strided conv, mean, dense."""

  def __init__(self, rngs: nnx.Rngs):
    conv = lambda c_in, c_out, stride=1: nnx.Conv(c_in, c_out, (3, 3), strides=stride,
                                                  rngs=rngs)
    self.stem, self.stem_bn = conv(3, 8), nnx.BatchNorm(8, rngs=rngs)
    self.a, self.a_bn = conv(8, 8), nnx.BatchNorm(8, rngs=rngs)
    self.b, self.b_bn = conv(8, 8), nnx.BatchNorm(8, rngs=rngs)
    self.c = conv(8, 16, 2)
    self.head = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x, train):
    bn = lambda norm, y: norm(y, use_running_average=not train)
    x = nnx.relu(bn(self.stem_bn, self.stem(x)))
    y = nnx.relu(bn(self.a_bn, self.a(x)))
    x = nnx.relu(x + bn(self.b_bn, self.b(y)))
    x = nnx.max_pool(x, (2, 2), (2, 2))
    return self.head(nnx.relu(self.c(x)).mean((1, 2)))


IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 3)), jnp.float32)


def gated_plain():
  net = Plain(nnx.Rngs(0))
  logits = net(IMAGES, train=False)
  gated = gating.gate_network(net, IMAGES, rngs=nnx.Rngs(1))
  return gated, tracing.trace_graph(gated, IMAGES), logits


def test_the_layers_whose_channels_are_their_own_are_gated_and_all_open_changes_nothing():
  gated, graph, logits = gated_plain()
  # The stem and b are tied by the residual add; the head gives the logits.
  assert {l.name: l.gate for l in graph.layers} == {
      "net/stem": None, "net/a": "net/a_bn/gates/0", "net/b": None,
      "net/c/module": "net/c/gates/0", "net/head": None}
  graph.check(gated)
  graph.set_log_alphas(gated, {g.name: np.full(g.size, 10.0) for g in graph.gates})
  np.testing.assert_allclose(gated(IMAGES, train=False), logits, rtol=1e-6, atol=1e-6)


def test_a_gated_network_trains_with_the_penalty_and_exports_its_logits():
  gated, graph, _ = gated_plain()
  labels = jnp.arange(8) % 10
  optimizer = nnx.Optimizer(gated, optax.adam(0.05), wrt=nnx.Param)
  before = graph.log_alphas(gated)

  @nnx.jit
  def step(gated, optimizer, key):
    def loss_fn(gated):
      logits = gated(IMAGES, train=True, gate_key=key)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return ce + l0jax.penalty(gated, graph, "macs")

    loss, grads = nnx.value_and_grad(loss_fn)(gated)
    optimizer.update(gated, grads)
    return loss

  losses = [float(step(gated, optimizer, jax.random.key(i))) for i in range(3)]
  assert np.all(np.isfinite(losses))
  for name, log_alpha in graph.log_alphas(gated).items():
    assert not np.allclose(log_alpha, before[name])
  rng = np.random.default_rng(0)
  graph.set_log_alphas(gated, {g.name: rng.normal(0, 3, g.size) for g in graph.gates})
  params = export.compact_params(gated, graph)
  labels = np.asarray(gated(IMAGES, train=False).argmax(-1))
  assert export.verify(gated, graph, params, np.asarray(IMAGES), labels,
                       8)["max_abs_logit_diff"] < 1e-4


def test_training_gates_are_drawn_per_key_and_example():
  gated, _, _ = gated_plain()
  call = nnx.jit(lambda gated, key: gated(IMAGES, train=True, gate_key=key))
  first, again, other = (call(gated, jax.random.key(k)) for k in (0, 0, 1))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)


# ResNet-8 has one block a stage: the last stage's channels that its shortcut's zeros are added
# to are tied to no other channel, yet an add reads them.
@pytest.mark.parametrize("network, depth", [(resnet.ResNet, 20), (resnet.ResNet, 8),
                                            (vgg.VGG, 11)])
def test_an_ungated_builtin_is_gated_where_the_builtin_gates(network, depth):
  gated = nnx.eval_shape(lambda: gating.gate_network(
      network(10, 3, depth=depth, use_gate=False, width_multiplier=0.25, rngs=nnx.Rngs(0)),
      jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32), rngs=nnx.Rngs(1)))
  graph = tracing.trace_graph(gated, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  builtin = nnx.eval_shape(lambda: network(10, 3, depth=depth, width_multiplier=0.25,
                                           rngs=nnx.Rngs(0))).channel_graph(32)
  assert [l.path[1:] for l in graph.layers if l.gate] == [
      l.path for l in builtin.layers if l.gate]
  assert [g.size for g in graph.gates] == [g.size for g in builtin.gates]


def test_a_gated_network_is_not_gated_again():
  gated, _, _ = gated_plain()
  with pytest.raises(GraphError, match="has gates already"):
    gating.gate_network(gated.net, IMAGES, rngs=nnx.Rngs(2))


def test_gate_residual_shares_one_gate_per_coupled_group_and_all_open_changes_nothing():
  net = Plain(nnx.Rngs(0))
  logits = net(IMAGES, train=False)
  gated = gating.gate_network(net, IMAGES, rngs=nnx.Rngs(1), gate_residual=True)
  graph = tracing.trace_graph(gated, IMAGES)
  assert {l.name: l.gate for l in graph.layers} == {
      "net/stem": "groups/0", "net/a": "net/a_bn/gates/0", "net/b": "groups/0",
      "net/c/module": "net/c/gates/0", "net/head": None}
  assert gated.net.stem_bn.gates[0] is gated.net.b_bn.gates[0] is gated.groups[0]
  graph.set_log_alphas(gated, {g.name: np.full(g.size, 10.0) for g in graph.gates})
  np.testing.assert_allclose(gated(IMAGES, train=False), logits, rtol=1e-6, atol=1e-6)


def test_a_shared_gate_is_drawn_with_one_key_for_all_its_members(monkeypatch):
  gated = gating.gate_network(Plain(nnx.Rngs(0)), IMAGES, rngs=nnx.Rngs(1), gate_residual=True)
  keys, draw = [], gates.gate_values
  monkeypatch.setattr(gates, "gate_values",
                      lambda log_alpha, key, n: keys.append(key) or draw(log_alpha, key, n))
  nnx.jit(lambda gated: gated(IMAGES, train=True, gate_key=jax.random.key(0)))(gated)
  stem, a, b, c = keys  # in the order the network calls them; stem and b share groups/0
  assert stem is b and len({id(k) for k in (stem, a, c)}) == 3


class InputAdd(nnx.Module):
  """A conv whose first 3 channels the input is added to (zero channels pad it to 6)."""

  def __init__(self, rngs: nnx.Rngs):
    self.widen = nnx.Conv(3, 6, (3, 3), rngs=rngs)
    self.conv = nnx.Conv(6, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x, train):
    y = self.widen(x) + jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 3)))
    return self.head(nnx.relu(self.conv(nnx.relu(y))).mean((1, 2)))


def test_gate_residual_leaves_a_layer_ungated_whose_channels_the_input_is_added_to():
  gated = gating.gate_network(InputAdd(nnx.Rngs(0)), IMAGES, rngs=nnx.Rngs(1),
                              gate_residual=True)
  graph = tracing.trace_graph(gated, IMAGES)
  # widen's channels 3-6 are a group of their own, but 0-3 hold the input's: gated whole or not.
  assert {l.name: l.gate for l in graph.layers} == {
      "net/widen": None, "net/conv/module": "net/conv/gates/0", "net/head": None}


def gated_resnet(hw=8):
  """A ResNet-20 of widths 4, 8, 16 with its stage widths gated: a mix of pruned, partly and
  fully open channels, stage 3's added channels closed whole (its shortcut pads nothing)."""
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, hw, hw, 3)), jnp.float32)
  net = resnet.ResNet(10, 3, depth=20, use_gate=False, width_multiplier=0.25, rngs=nnx.Rngs(0))
  gated = gating.gate_network(net, images, rngs=nnx.Rngs(1), gate_residual=True)
  graph = tracing.trace_graph(gated, images)
  rng = np.random.default_rng(0)
  graph.set_log_alphas(gated, {g.name: rng.normal(0, 3, g.size) for g in graph.gates})
  graph.set_log_alphas(gated, {"groups/0": [6.0, -6.0, 0.5, 6.0], "groups/1": [-6.0, 6.0, 6.0, 0.3],
                               "groups/2": np.full(8, -6.0)})
  return gated, graph, images


def test_gate_residual_gates_each_resnet_stage_width_in_the_stem_and_every_block():
  gated, graph, _ = gated_resnet()
  conv2 = lambda s: [f"net/stages/{s}/{b}/conv2/conv" for b in range(3)]
  widths = {g.name: [(l.name, start, stop) for l, start, stop in graph.members(g.name)]
            for g in graph.gates if g.name.startswith("groups/")}
  assert widths == {
      "groups/0": [("net/stem/conv", 0, 4)] + [(n, 0, 4) for s in range(3) for n in conv2(s)],
      "groups/1": [(n, 4, 8) for s in (1, 2) for n in conv2(s)],
      "groups/2": [(n, 8, 16) for n in conv2(2)]}
  inner = [l for l in graph.layers if l.name.endswith("conv1/conv")]
  assert [l.gate for l in inner] == [l.name.removesuffix("conv") + "bn/gates/0" for l in inner]
  graph.check(gated)


def test_gated_stage_widths_count_exactly_what_the_compact_network_holds_and_export():
  gated, graph, images = gated_resnet()
  params = export.compact_params(gated, graph)
  costs = accounting.count(graph, accounting.deterministic_kept(graph.log_alphas(gated)))
  for c in costs:  # the compact arrays, counted by brute force
    kernel, bias = params[c.name]["kernel"], params[c.name]["bias"]
    assert kernel.shape[-2:] == (c.kept_in, c.kept_out) and bias.shape == (c.kept_out,)
    assert c.macs == kernel.size * c.out_hw**2
  kept = {name: k.channels for name, k in accounting.deterministic_kept(
      graph.log_alphas(gated)).items()}
  assert kept["groups/0"] == kept["groups/1"] == 3
  assert [c.kept_out for c in costs if c.name.endswith("conv2/conv")] == (
      [kept["groups/0"]] * 3 + [kept["groups/0"] + kept["groups/1"]] * 6)
  # The shortcuts' zero channels: those that line up with kept channels of stage 2, of 3 none.
  assert [(len(params[n.name]["before"]), len(params[n.name]["after"])) for n in graph.nodes
          if n.name.startswith("shortcut")] == [(0, kept["groups/1"]), (0, 0)]
  labels = np.asarray(gated(images, train=False).argmax(-1))
  assert export.verify(gated, graph, params, np.asarray(images), labels,
                       4)["max_abs_logit_diff"] < 1e-4
