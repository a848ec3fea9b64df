"""The channel graph: derived sizes, who reads whom, and one clear error for a wrong graph."""

import dataclasses
import re

import jax.numpy as jnp
import pytest
from flax import nnx

from l0jax import accounting, gates, googlenet
from l0jax.errors import UserError
from l0jax.graphs import INPUT, Add, Gate, Graph, GraphError, Layer, Pad, Pool, Segment


class TinyNet(nnx.Module):
  """conv (gated) -> max-pool -> conv, with an option-A shortcut around it -> pool -> dense."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(4, rngs=rngs)
    self.gate = gates.L0Gate(4, 0.5, rngs=rngs)
    self.conv2 = nnx.Conv(4, 6, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(6, 5, rngs=rngs)


NODES = (
    Layer("conv1", (INPUT,), 3, 4, kernel=3, gate="g", path=("conv1",), bn=("bn1",)),
    Pool("pool", ("conv1",), window=2, stride=2, padding=0),
    Layer("conv2", ("pool",), 4, 6, kernel=3, stride=2, path=("conv2",), relu=False),
    Pad("shortcut", (INPUT,), stride=4, before=1, after=2),
    Add("add", ("conv2", "shortcut")),
    Pool("avg", ("add",), kind="mean"),
    Layer("head", ("avg",), 6, 5, dense=True, relu=False, path=("head",)),
)
GATES = (Gate("g", 4, ("gate", "log_alpha")),)


def tiny_graph(nodes=NODES, gates_=GATES, hw=16):
  return Graph(hw, 3, tuple(nodes), tuple(gates_))


def replace(name, nodes=NODES, **changes):
  return [dataclasses.replace(n, **changes) if n.name == name else n for n in nodes]


# conv1 and conv2 share the gate "g": the add ties conv2's channels 1-4 to the pooled conv1's.
TIED = replace("shortcut", replace("conv2", gate=("a", "g", "b")), inputs=("pool",), stride=2,
               before=1, after=1)
TIED_GATES = GATES + (Gate("a", 1, ("a",)), Gate("b", 1, ("b",)))
# conv2 gated by conv1's gate, with no add between them.
UNTIED = [n for n in replace("head", replace("avg", replace("conv2", gate="g", c_out=4),
                                             inputs=("conv2",)), c_in=4)
          if not isinstance(n, (Add, Pad))]


def test_sizes_readers_and_whole_layers_are_derived():
  g = tiny_graph()
  assert [g.out_hw(n.name) for n in NODES] == [16, 8, 4, 4, 4, 1, 1]
  assert [l.name for l in g.layers] == ["conv1", "conv2", "head"]
  assert [l.name for l in g.readers["conv1"]] == ["conv2"]
  assert [l.name for l in g.readers[INPUT]] == ["conv1", "head"]  # through the shortcut
  assert g.whole_layers == {"conv2", INPUT, "head"}  # tied by the add and the shortcut; the output
  assert g.gated_layer("g").name == "conv1"
  assert [s.gate for s in g.input_segments(NODES[2])] == ["g"]
  assert g.layers[0].per_output == 3 and g.layers[2].per_output == 1


def test_a_gate_shared_by_layers_an_add_ties_decides_their_channels_and_the_adds():
  g = tiny_graph(TIED, TIED_GATES)
  assert [(l.name, start, stop) for l, start, stop in g.members("g")] == [
      ("conv1", 0, 4), ("conv2", 1, 5)]
  assert g.segments("shortcut") == (Segment((), None, 1), Segment(("conv1",), "g", 4),
                                     Segment((), None, 1))
  assert g.segments("add") == (Segment(("conv2",), "a", 1), Segment(("conv2", "conv1"), "g", 4),
                               Segment(("conv2",), "b", 1))
  assert g.whole_layers == {"head"}  # every channel the add ties is gated
  costs = accounting.count(g, {"g": accounting.Kept(2, 1), "a": accounting.Kept(0, 0)})
  assert [(c.kept_in, c.kept_out) for c in costs] == [(3, 2), (2, 3), (3, 5)]


def test_the_graph_holds_against_its_module():
  net = TinyNet(nnx.Rngs(0))
  g = tiny_graph()
  g.check(net)
  assert list(g.log_alphas(net)) == ["g"]
  g.set_log_alphas(net, {"g": jnp.arange(4.0)})
  assert isinstance(net.gate.log_alpha, gates.LogAlpha)
  assert net.gate.log_alpha[...].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("nodes, gates_, named", [
    (replace("conv2", inputs=("nowhere",)), GATES, "conv2: reads 'nowhere'"),
    (replace("conv2", c_in=5), GATES, "conv2: reads 4 channels from ['pool'], but states c_in=5"),
    (replace("conv1", gate="h"), GATES, "conv1: its gate 'h' is not one"),
    (NODES, (Gate("g", 5, ()),), "conv1: its gate 'g' has 5 channels"),
    (UNTIED, GATES, "conv2: its gate 'g' already gates conv1, and no residual add ties"),
    (replace("shortcut", after=1), GATES, "add: adds inputs of different shapes"),
    (replace("shortcut", inputs=("conv1",), before=1, after=1), GATES,
     "add: adds an ungated one to channel 0 of gate 'g' (its channel 1)"),
    (replace("shortcut", TIED, before=2, after=0), TIED_GATES,
     "add: adds channel 1 of gate 'g' to channel 0 of gate 'g' (its channel 2)"),
    (replace("conv2", TIED, gate=("a", "g", "a")), TIED_GATES, "conv2: names a gate twice"),
    (replace("conv2", TIED, gate=("a", "g")), TIED_GATES,
     "conv2: its gate ('a', 'g') has 5 channels, the layer c_out=6"),
    (replace("avg", kind="max"), GATES, "head: a dense layer reads 4x4 images"),
    (replace("conv1", gate=None), GATES, "gate(s) ['g'] gate no layer"),
])
def test_a_graph_that_contradicts_itself_names_the_node(nodes, gates_, named):
  with pytest.raises(GraphError, match=re.escape(named)):
    tiny_graph(nodes, gates_)
  assert issubclass(GraphError, UserError)  # the CLI prints one line and exits 2


@pytest.mark.parametrize("nodes, gates_, named", [
    (replace("conv2", path=("conv9",)), GATES, "conv2: the module has nothing at its path"),
    (replace("conv1", kernel=5), GATES, r"conv1: the module's kernel at conv1 has shape "
                                        r"\(3, 3, 3, 4\), the graph says \(5, 5, 3, 4\)"),
    (replace("head", bias=False), GATES, "head: bias=False in the graph"),
    (NODES, (Gate("g", 4, ("bn1", "scale")),), "gate g: no gates.LogAlpha at bn1/scale"),
    (replace("conv1", gate=None), (), "the module has gates the graph does not list: "
                                      "gate/log_alpha"),
])
def test_a_graph_that_does_not_match_its_module_names_the_layer(nodes, gates_, named):
  with pytest.raises(GraphError, match=named):
    tiny_graph(nodes, gates_).check(TinyNet(nnx.Rngs(0)))


@pytest.mark.parametrize("use_gate", [True, False])
def test_the_googlenet_states_a_graph_that_matches_it(use_gate):
  net = nnx.eval_shape(lambda: googlenet.GoogleNet(10, 1, use_gate=use_gate, width_multiplier=0.25,
                                                   rngs=nnx.Rngs(0)))
  g = net.channel_graph(28)
  g.check(net)
  assert len(g.layers) == 1 + 8 * 6 + 1 and len(g.gates) == (32 if use_gate else 0)
  assert [g.out_hw(f"block{i}/branch1") for i in (2, 3, 6, 7)] == [28, 14, 14, 7]
  assert [l.name for l in g.readers["block3/branch5_reduce"]] == ["block3/branch5"]
