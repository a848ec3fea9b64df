"""The channel graph traced from a network's program: the same as the stated one, or one error."""

import dataclasses
import functools
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l0jax import accounting, export, gates, googlenet, layers, resnet, tracing, vgg
from l0jax.graphs import INPUT, Graph, GraphError, Layer, Pool

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/examples")
import stated_graph  # pylint: disable=wrong-import-position


def images(hw: int, channels: int = 3) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((8, hw, hw, channels), jnp.float32)


def _start(graph: Graph, node, reads_hw: int) -> int | None:
  """Where a layer's or max-pool's first window starts, however its padding is spelled."""
  if getattr(node, "dense", False) or getattr(node, "kind", "max") == "mean":
    return None
  kernel = node.kernel if isinstance(node, Layer) else node.window
  if node.padding != "SAME":
    return node.padding
  return max((graph.out_hw(node.name) - 1) * node.stride + kernel - reads_hw, 0) // 2


def canonical(graph: Graph) -> list:
  """The nodes with every name replaced by what it names: a layer by its path, a gate by its
  variable's, any other node by its kind and inputs; paddings as the pixel a window starts at."""
  names, gate_paths, nodes = {INPUT: INPUT}, {g.name: (g.path, g.size) for g in graph.gates}, []
  for node in graph.nodes:
    inputs = tuple(names[n] for n in node.inputs)
    key = ("layer", node.path) if isinstance(node, Layer) else (type(node).__name__, inputs)
    reads_hw = graph.out_hw(node.inputs[0])
    changes = {"name": key, "inputs": inputs}
    if isinstance(node, (Layer, Pool)):
      changes["padding"] = _start(graph, node, reads_hw)
    if isinstance(node, Layer):
      changes["gate"] = tuple(gate_paths[g] for g in node.gate_names)
    names[node.name] = key
    nodes.append(dataclasses.replace(node, **changes))
  return nodes


def random_kept(graph: Graph, seed: int) -> dict[tuple, accounting.Kept]:
  """Some channels of each gate kept, some gates closed, by gate path."""
  rng = np.random.default_rng(seed)
  kept = {}
  for g in sorted(graph.gates, key=lambda g: g.path):
    n = int(rng.integers(0, g.size + 1))
    kept[g.path] = accounting.Kept(n, int(n > 0))
  return kept


def assert_same(traced: Graph, stated: Graph) -> None:
  assert (traced.input_hw, traced.in_channels) == (stated.input_hw, stated.in_channels)
  for t, s in zip(canonical(traced), canonical(stated)):
    assert t == s
  assert len(traced.nodes) == len(stated.nodes)
  assert sorted((g.path, g.size) for g in traced.gates) == sorted(
      (g.path, g.size) for g in stated.gates)
  assert [traced.out_hw(n.name) for n in traced.nodes] == [
      stated.out_hw(n.name) for n in stated.nodes]
  for seed in (None, 0, 1):
    by_path = None if seed is None else random_kept(stated, seed)
    costs = [accounting.count(g, None if by_path is None else
                              {gate.name: by_path[gate.path] for gate in g.gates})
             for g in (traced, stated)]
    assert [(c.params, c.macs, c.kept_in, c.kept_out) for c in costs[0]] == [
        (c.params, c.macs, c.kept_in, c.kept_out) for c in costs[1]]


def abstract(make):
  return nnx.eval_shape(lambda: make(rngs=nnx.Rngs(0)))


NETWORKS = {
    "googlenet": lambda w, **kw: functools.partial(googlenet.GoogleNet, 10, 3, width_multiplier=w,
                                                   **kw),
    "googlenet_reduce": lambda w, **kw: functools.partial(
        googlenet.GoogleNet, 10, 3, width_multiplier=w, gate_reduce=True, **kw),
    "resnet20": lambda w, **kw: functools.partial(resnet.ResNet, 10, 3, depth=20,
                                                  width_multiplier=w, **kw),
    "resnet20_residual": lambda w, **kw: functools.partial(
        resnet.ResNet, 10, 3, depth=20, width_multiplier=w, gate_residual=True, **kw),
    "resnet56": lambda w, **kw: functools.partial(resnet.ResNet, 10, 3, depth=56,
                                                  width_multiplier=w, **kw),
    "vgg11": lambda w, **kw: functools.partial(vgg.VGG, 10, 3, depth=11, width_multiplier=w,
                                               **kw),
    "vgg16": lambda w, **kw: functools.partial(vgg.VGG, 10, 3, depth=16, width_multiplier=w,
                                               **kw),
}


@pytest.mark.parametrize("width", [0.25, 1.0])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_the_traced_graph_is_the_stated_one(name, width):
  net = abstract(NETWORKS[name](width))
  stated = net.stated_channel_graph(32)
  assert_same(tracing.trace_graph(net, images(32)), stated)
  # What the network gives: the traced graph, under the stated graph's names.
  named = net.channel_graph(32)
  assert [n.name for n in named.nodes] == [n.name for n in stated.nodes]
  assert named.gates == stated.gates
  assert_same(named, stated)


@pytest.mark.parametrize("dtype", ["bfloat16_matmuls", "bfloat16"])
@pytest.mark.parametrize("name", ["googlenet", "resnet20", "resnet20_residual", "vgg11"])
def test_bfloat16_networks_trace_the_same(name, dtype):
  """bfloat16_matmuls: convolutions and dots inside custom VJPs; bfloat16: casts everywhere."""
  kwargs = ({"bfloat16_matmuls": True} if dtype == "bfloat16_matmuls"
            else {"dtype": jnp.bfloat16})
  net = abstract(NETWORKS[name](0.5, **kwargs))
  assert_same(tracing.trace_graph(net, images(32)), net.stated_channel_graph(32))


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_odd_sizes_and_one_channel_images_trace_the_same(name):
  """28x28: VGG's last pools round up ('SAME'), as on Fashion-MNIST; no gates."""
  network = {"resnet20": resnet.ResNet, "vgg11": vgg.VGG}[name]
  net = abstract(functools.partial(network, 10, 1, depth=int(name[-2:]), width_multiplier=0.5,
                                   use_gate=False))
  assert_same(tracing.trace_graph(net, images(28, 1)), net.stated_channel_graph(28))


@pytest.mark.parametrize("hw", [1, 5, 8, 9])
@pytest.mark.parametrize("name", ["googlenet", "resnet20", "vgg11"])
def test_small_and_odd_images_trace_the_same(name, hw):
  """Maps of 1x1 and odd sides: a VGG's pools pad them with -inf and split off axes of 1."""
  net = abstract(NETWORKS[name](0.25))
  assert_same(tracing.trace_graph(net, images(hw)), net.stated_channel_graph(hw))


@pytest.mark.parametrize("use_gate", [False, True])
@pytest.mark.parametrize("name, width", [("googlenet", 0.16), ("resnet20", 0.01),
                                         ("vgg11", 0.01)])
def test_one_channel_layers_trace_the_same(name, width, use_gate):
  """Widths that round some layers to one channel: their bias, BN and gate are per-channel."""
  net = abstract(NETWORKS[name](width, use_gate=use_gate))
  stated = net.stated_channel_graph(8)
  assert 1 in {layer.c_out for layer in stated.layers}
  assert_same(tracing.trace_graph(net, images(8)), stated)


def test_the_example_network_traces_to_its_stated_graph():
  net = stated_graph.SmallResNet(8, rngs=nnx.Rngs(0))
  assert_same(tracing.trace_graph(net, images(16)), net.channel_graph(16))


def test_a_traced_graph_of_a_real_module_checks_and_counts():
  net = resnet.ResNet(10, 3, depth=8, rngs=nnx.Rngs(0))
  graph = tracing.trace_graph(net, np.zeros((1, 16, 16, 3), np.float32))
  graph.check(net)
  reports = [accounting.report(g, g.log_alphas(net)) for g in (graph, net.stated_channel_graph(16))]
  for report in reports:
    for layer in report["layers"]:
      del layer["name"]  # module paths in the one, the stated names in the other
  assert reports[0] == reports[1]


def test_the_export_of_a_traced_graph_gives_the_gated_networks_logits():
  net = stated_graph.SmallResNet(8, rngs=nnx.Rngs(0))
  graph = tracing.trace_graph(net, images(16))
  rng = np.random.default_rng(0)
  graph.set_log_alphas(net, {g.name: rng.normal(0, 3, g.size) for g in graph.gates})
  x = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
  params = export.compact_params(net, graph)
  metrics = export.verify(net, graph, params, x, np.asarray(net(x, train=False).argmax(-1)), 4)
  assert metrics["max_abs_logit_diff"] < 1e-4
  assert metrics["params_compact"] < accounting.totals(accounting.count(graph, None))[0]


@jax.custom_vjp
def _pool_3x3(x):
  """A 3x3/1 max-pool as issue 41 writes it: a custom VJP around pads, slices and maxima."""
  return layers.max_pool_3x3(x, 1)


_pool_3x3.defvjp(lambda x: (_pool_3x3(x), x), lambda x, g: (g,))


class Net(nnx.Module):
  """conv + BN + ReLU (gated) -> `body` -> global mean -> dense; `body` varies by test."""

  def __init__(self, body=lambda self, x: x, c: int = 8, *, rngs: nnx.Rngs):
    self.body = body
    self.conv = nnx.Conv(3, c, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(c, rngs=rngs)
    self.gate = gates.L0Gate(c, 0.5, rngs=rngs)
    self.conv2 = nnx.Conv(c, c, (3, 3), feature_group_count=c, rngs=rngs)
    self.conv3 = nnx.Conv(c, c, (1, 1), rngs=rngs)
    self.head = nnx.Linear(c, 10, rngs=rngs)
    self.flat_head = nnx.Linear(c * 8 * 8, 10, rngs=rngs)

  def stem(self, x):
    x = nnx.relu(self.bn(self.conv(x), use_running_average=True))
    return gates.gate_channels(x, self.gate.log_alpha[...])

  def __call__(self, x, train=False):
    return self.head(jnp.mean(self.body(self, self.stem(x)), axis=(1, 2)))


def trace(body) -> Graph:
  return tracing.trace_graph(Net(body, rngs=nnx.Rngs(0)), images(8))


def test_a_one_channel_layer_has_its_bias_bn_and_gate():
  conv = tracing.trace_graph(Net(c=1, rngs=nnx.Rngs(0)), images(8)).nodes[0]
  assert (conv.c_out, conv.bias, conv.bn, conv.gate) == (1, True, ("bn",), "gate")


@pytest.mark.parametrize("c, shape", [(1, None), (1, ()), (8, None), (8, ()), (8, (1,))])
def test_one_number_times_every_channel_is_refused(c, shape):
  """A Python number (None) or a 0-d variable times a map of one channel or eight, or a
  variable of one channel broadcast over eight: no per-channel operand, one-channel or not."""
  net = Net(lambda self, x: x * (2.0 if shape is None else self.scale[...]), c, rngs=nnx.Rngs(0))
  net.scale = nnx.Param(jnp.full(shape or (), 2.0))
  with pytest.raises(GraphError, match="mul of every channel by one number"):
    tracing.trace_graph(net, images(8))


def test_a_one_channel_map_times_one_plus_zero_is_itself():
  def traced(body):
    return canonical(tracing.trace_graph(Net(body, 1, rngs=nnx.Rngs(0)), images(8)))

  assert traced(lambda self, x: x * 1.0 + 0.0) == traced(lambda self, x: x)


def test_a_custom_vjp_pool_is_read_inside():
  graph = trace(lambda self, x: self.conv3(_pool_3x3(x)))
  assert [type(n).__name__ for n in graph.nodes] == ["Layer", "Pool", "Layer", "Pool", "Layer"]
  assert graph.nodes[1] == Pool("max_pool1", ("conv",), window=3, stride=1, padding=1)
  assert graph.nodes[0].gate == "gate" and graph.nodes[0].bn == ("bn",)


def _im2col(x, kernel):
  """A 'SAME' stride-1 convolution as im2col: k*k shifted copies of x, times the kernel."""
  k, h, w = kernel.shape[0], x.shape[1], x.shape[2]
  x = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  patches = jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(k) for j in range(k)], -1)
  return jax.lax.dot_general(patches, kernel.reshape(-1, kernel.shape[-1]),
                             (((3,), (0,)), ((), ())))


@jax.custom_vjp
def _im2col_conv(x, kernel):
  return _im2col(x, kernel)


_im2col_conv.defvjp(lambda x, k: (_im2col(x, k), (x, k)), lambda res, g: res)


@pytest.mark.parametrize("im2col", [_im2col, _im2col_conv], ids=["plain", "custom_vjp"])
def test_an_im2col_convolution_is_a_convolution(im2col):
  """As `convolutions.py` computes some shapes; here of a max-pool's output."""
  def traced(conv):
    net = Net(lambda self, x: self.conv2(_pool_3x3(x)), rngs=nnx.Rngs(0))
    net.conv2 = nnx.Conv(8, 8, (3, 3), conv_general_dilated=conv, rngs=nnx.Rngs(1))
    return tracing.trace_graph(net, images(8))

  graph = traced(lambda x, kernel, *args, **kwargs: im2col(x, kernel))
  assert canonical(graph) == canonical(traced(jax.lax.conv_general_dilated))
  assert graph.layers[1] == Layer("conv2", ("max_pool1",), 8, 8, kernel=3, padding=1,
                                  relu=False, path=("conv2",))


def one_line_error(body, *patterns: str) -> str:
  with pytest.raises(GraphError) as e:
    trace(body)
  message = str(e.value)
  assert "\n" not in message
  for pattern in patterns:
    assert re.search(pattern, message), message
  return message


def test_an_untraceable_operation_is_one_line_naming_it_and_its_line():
  one_line_error(lambda self, x: jnp.cumsum(x, axis=-1), r"cannot trace cumsum at ",
                 r"test_tracing\.py:\d+")
  one_line_error(lambda self, x: x * x, r"cannot trace mul .*two activations")
  one_line_error(lambda self, x: jnp.concatenate([x[..., 4:], x[..., :4]], -1),
                 r"cannot trace slice .*selects no channels")


def test_a_layer_read_before_its_gate_is_refused():
  net = Net(rngs=nnx.Rngs(0))

  def apply(net, x):
    y = nnx.relu(net.bn(net.conv(x), use_running_average=True))
    return net.head(jnp.mean(net.conv3(y) + gates.gate_channels(y, net.gate.log_alpha[...]),
                             axis=(1, 2)))

  with pytest.raises(GraphError, match=r"test_tracing\.py:\d+ .*reads conv before its gate"):
    tracing.trace_graph(net, images(8), apply)


def test_out_of_scope_forms_are_refused_in_one_line():
  """A depthwise conv and a flatten-then-dense head: not statable in the graph (README)."""
  one_line_error(lambda self, x: self.conv3(self.conv2(x)), r"grouped convolution",
                 r"depthwise")
  net = Net(rngs=nnx.Rngs(0))
  with pytest.raises(GraphError, match="flattened map"):
    tracing.trace_graph(net, images(8),
                        lambda net, x: net.flat_head(net.stem(x).reshape(x.shape[0], -1)))


def test_training_mode_batch_norm_is_refused():
  net = Net(rngs=nnx.Rngs(0))
  with pytest.raises(GraphError, match="cannot trace"):
    tracing.trace_graph(net, images(8), lambda net, x: net.head(
        jnp.mean(net.bn(net.conv(x), use_running_average=False), axis=(1, 2))))
