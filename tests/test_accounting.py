"""Parameter and MAC counts against hand counts written from the UvA GoogleNet's table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from l0jax import accounting, gates, googlenet, networks
from l0jax.errors import UserError

# The UvA GoogleNet's blocks, row by row: c_in, red3, red5, out1, out3, out5, out_pool, spatial size at 32x32.
SPEC_BLOCKS = (
    (64, 32, 16, 16, 32, 8, 8, 32),
    (64, 32, 16, 24, 48, 12, 12, 32),
    (96, 32, 16, 24, 48, 12, 12, 16),
    (96, 32, 16, 16, 48, 16, 16, 16),
    (96, 32, 16, 16, 48, 16, 16, 16),
    (96, 32, 16, 32, 48, 24, 24, 16),
    (128, 48, 16, 32, 64, 16, 16, 8),
    (128, 48, 16, 32, 64, 16, 16, 8),
)
FULL_PARAMS = 260_650
FULL_MACS = 79_643_904
ARCH = googlenet.Architecture.at_width(1.0)
CIFAR = dict(image_hw=32, in_channels=3, num_classes=10)
GRAPH = googlenet.channel_graph(ARCH, use_gate=True, **CIFAR)
OPEN, CLOSED = 100.0, -100.0  # log_alpha with P(z != 0) = 1 and 0 (and test-time gates 1 and 0)


def hand_count():
  """Params and MACs of the full network, straight from the table."""
  params = 3 * 64 * 9 + 3 * 64  # stem: conv 3x3, 3 -> 64
  macs = 3 * 64 * 9 * 32 * 32
  for c_in, red3, red5, out1, out3, out5, out_pool, hw in SPEC_BLOCKS:
    convs = [(c_in, out1, 1), (c_in, red3, 1), (red3, out3, 3), (c_in, red5, 1), (red5, out5, 5),
             (c_in, out_pool, 1)]
    params += sum(i * o * k * k + 3 * o for i, o, k in convs)
    macs += sum(i * o * k * k * hw * hw for i, o, k in convs)
  return params + 128 * 10 + 10, macs + 128 * 10


def all_open() -> dict[str, jax.Array]:
  return {f"block{i + 1}/{branch}": jnp.full(c, OPEN) for i, block in enumerate(ARCH.blocks)
          for branch, c in zip(googlenet.BRANCHES, block.outputs)}


def counts(log_alphas, **shape) -> dict[str, accounting.LayerCost]:
  graph = googlenet.channel_graph(ARCH, use_gate=True, **(shape or CIFAR))
  return {l.name: l for l in accounting.count(graph, accounting.deterministic_kept(log_alphas))}


def summary(log_alphas, image_shape=(32, 32, 3)):
  graph = googlenet.channel_graph(ARCH, use_gate=True, image_hw=image_shape[0],
                                  in_channels=image_shape[-1], num_classes=10)
  return accounting.report(graph, log_alphas)


def test_full_model_counts_are_pinned():
  assert hand_count() == (FULL_PARAMS, FULL_MACS)
  assert accounting.totals(accounting.count(GRAPH, None)) == (FULL_PARAMS, FULL_MACS)
  net = nnx.eval_shape(lambda: googlenet.GoogleNet(10, 3, use_gate=False, rngs=nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param))) == FULL_PARAMS
  s = accounting.report(net.channel_graph(32), {})
  assert (s["params_full"], s["params_kept"], s["macs_full"], s["macs_kept"]) == (
      FULL_PARAMS, FULL_PARAMS, FULL_MACS, FULL_MACS)
  assert (s["flops_full"], s["flops_kept"]) == (2 * FULL_MACS, 2 * FULL_MACS)


def test_gated_model_counts_like_the_ungated_one_when_all_open():
  assert summary(all_open())["params_kept"] == FULL_PARAMS
  assert summary(all_open())["macs_kept"] == FULL_MACS
  assert summary(all_open())["gated_channels_kept"] == 832


@pytest.mark.parametrize("image_hw, sizes", [(32, (32, 16, 8)), (28, (28, 14, 7))])
def test_spatial_sizes_follow_the_pools(image_hw, sizes):
  layers = counts(all_open(), image_hw=image_hw, in_channels=1, num_classes=10)
  assert [layers[f"block{i}/branch1"].out_hw for i in (1, 2, 3, 6, 7, 8)] == [
      sizes[0], sizes[0], sizes[1], sizes[1], sizes[2], sizes[2]]
  assert layers["stem"].out_hw == image_hw


def test_a_closed_branch_removes_its_convs_and_the_next_blocks_inputs():
  la = all_open() | {"block3/5x5": jnp.full(12, CLOSED)}
  s = summary(la)
  # block3's 5x5 (16 -> 12) and its now useless reduce (96 -> 16) go; block4's four 1x1 convs
  # (16 + 32 + 16 + 16 outputs) lose 12 input channels. All at 16x16.
  assert s["params_kept"] == FULL_PARAMS - (16 * 12 * 25 + 3 * 12) - (96 * 16 + 3 * 16) - 12 * 80
  assert s["macs_kept"] == FULL_MACS - (16 * 12 * 25 + 96 * 16 + 12 * 80) * 16 * 16
  layers = counts(la)
  assert layers["block3/branch5"].kept_out == layers["block3/branch5_reduce"].kept_out == 0
  assert layers["block4/branch3_reduce"].kept_in == 96 - 12


def test_a_closed_block_leaves_the_next_block_only_biases():
  la = all_open() | {f"block5/{b}": jnp.full(c, CLOSED)
                     for b, c in zip(googlenet.BRANCHES, ARCH.blocks[4].outputs)}
  s = summary(la)
  block5_params = (96 * 16 + 48) + (96 * 32 + 96) + (32 * 48 * 9 + 144) + (96 * 16 + 48) + (
      16 * 16 * 25 + 48) + (96 * 16 + 48)
  block5_macs = (96 * 16 + 96 * 32 + 32 * 48 * 9 + 96 * 16 + 16 * 16 * 25 + 96 * 16) * 16 * 16
  block6_inputs = 96 * (32 + 32 + 16 + 24)  # weights of block6's 1x1 convs reading block5
  assert s["params_kept"] == FULL_PARAMS - block5_params - block6_inputs
  assert s["macs_kept"] == FULL_MACS - block5_macs - block6_inputs * 16 * 16
  layers = {l["name"]: l for l in s["layers"]}
  for name in ("branch1", "branch3_reduce", "branch5_reduce", "branch_pool"):
    assert layers[f"block6/{name}"]["kept_in"] == 0
    assert layers[f"block6/{name}"]["macs"] == 0
  assert layers["block6/branch1"]["params"] == 3 * 32


def test_partially_kept_outputs_reach_the_head():
  la = all_open() | {"block8/1x1": jnp.where(jnp.arange(32) < 5, OPEN, CLOSED),
                     "block8/pool": jnp.full(16, CLOSED)}
  s = summary(la)
  head = s["layers"][-1]
  assert (head["name"], head["kept_in"], head["params"], head["macs"]) == (
      "head", 5 + 64 + 16, 85 * 10 + 10, 85 * 10)
  # block8: 27 of branch1's and all 16 of branch_pool's outputs go (128 inputs, 8x8).
  assert s["params_kept"] == FULL_PARAMS - (27 + 16) * (128 + 3) - (27 + 16) * 10
  assert s["macs_kept"] == FULL_MACS - (27 + 16) * 128 * 64 - (27 + 16) * 10
  assert s["gated_channels_kept"] == 832 - 27 - 16


def test_report_is_json_ready():
  s = summary(all_open() | {"block1/3x3": jnp.full(32, CLOSED)}, image_shape=(28, 28, 1))
  for key in ("params_full", "params_kept", "macs_full", "macs_kept", "flops_full", "flops_kept"):
    assert type(s[key]) is int, key
  assert s["flops_kept"] == 2 * s["macs_kept"]
  assert len(s["layers"]) == 1 + 8 * 6 + 1
  for layer in s["layers"]:
    assert {"name", "kernel", "out_hw", "c_in", "c_out", "kept_in", "kept_out", "params",
            "macs"} <= set(layer)
    assert all(type(v) is int for k, v in layer.items() if k != "name"), layer
  assert sum(l["params"] for l in s["layers"]) == s["params_kept"]
  table = accounting.format_table(s)
  assert "block1/branch3" in table and f"{s['params_kept']:,}" in table


def test_a_network_without_gates_gets_one_line_not_a_table_of_kept_channels():
  graph = googlenet.channel_graph(ARCH, use_gate=False, **CIFAR)
  assert accounting.format_table(accounting.report(graph, {})) == (
      f"no gates, every channel kept: {FULL_PARAMS:,} parameters, {FULL_MACS:,} MACs in 50 conv "
      "and dense layers")


def test_report_refuses_unknown_gates_and_non_square_images():
  with pytest.raises(ValueError, match="block9"):
    summary(all_open() | {"block9/1x1": jnp.zeros(4)})
  with pytest.raises(ValueError, match="square"):
    networks.channel_graph(tiny_config(), (32, 28, 3), 10)


def test_closing_a_whole_block_disconnects_the_network_and_one_channel_reconnects_it():
  block5 = {f"block5/{b}": jnp.full(c, CLOSED)
            for b, c in zip(googlenet.BRANCHES, ARCH.blocks[4].outputs)}
  connected = lambda la: accounting.connected(GRAPH, accounting.deterministic_kept(la))
  assert connected(all_open())
  assert connected(all_open() | dict(list(block5.items())[:3]))  # the pool branch carries it
  assert not connected(all_open() | block5)
  s = summary(all_open() | block5)
  assert not s["connected"] and "disconnect" in accounting.format_table(s)
  assert "disconnect" not in accounting.format_table(summary(all_open()))
  one = jnp.where(jnp.arange(ARCH.blocks[4].outputs[3]) == 0, OPEN, CLOSED)
  assert connected(all_open() | block5 | {"block5/pool": one})


def random_log_alphas(key, closed=("block3/5x5",)) -> dict[str, jax.Array]:
  """Each channel fully open or closed at random, some branches closed entirely."""
  la = all_open()
  keys = jax.random.split(key, len(la))
  return {name: jnp.full_like(a, CLOSED) if name in closed
          else jnp.where(jax.random.bernoulli(k, 0.6, a.shape), OPEN, CLOSED)
          for (name, a), k in zip(la.items(), keys)}


def test_expected_counts_equal_deterministic_ones_for_certain_gates():
  la = random_log_alphas(jax.random.key(0))
  expected = accounting.count(GRAPH, accounting.expected_kept(la))
  deterministic = accounting.count(GRAPH, accounting.deterministic_kept(la))
  for e, d in zip(expected, deterministic):
    np.testing.assert_allclose([e.kept_in, e.kept_out, e.params, e.macs],
                               [d.kept_in, d.kept_out, d.params, d.macs], rtol=1e-6, err_msg=e.name)
  np.testing.assert_allclose(accounting.totals(expected), accounting.totals(deterministic),
                             rtol=1e-6)


def test_mean_gate_penalty_is_the_mean_probability():
  la = jax.tree.map(lambda a: jax.random.normal(jax.random.key(1), a.shape), all_open())
  want = np.mean(np.concatenate([gates.prob_open(a) for a in la.values()]))
  got = accounting.penalty("mean_gate", la, GRAPH)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_cost_penalties_are_kept_fractions(kind):
  np.testing.assert_allclose(accounting.penalty(kind, all_open(), GRAPH), 1.0, rtol=1e-6)
  la = random_log_alphas(jax.random.key(2))
  layers = counts(la)
  which = 0 if kind == "params" else 1
  np.testing.assert_allclose(accounting.penalty(kind, la, GRAPH),
                             accounting.totals(list(layers.values()))[which] / hand_count()[which],
                             rtol=1e-5)
  closed = jax.tree.map(lambda a: jnp.full_like(a, CLOSED), la)
  assert 0.0 < accounting.penalty(kind, closed, GRAPH) < 0.05


@pytest.mark.parametrize("kind", accounting.PENALTIES)
def test_penalties_are_traceable_and_reach_every_log_alpha(kind):
  la = jax.tree.map(lambda a: jax.random.normal(jax.random.key(3), a.shape), all_open())
  f = lambda la: accounting.penalty(kind, la, GRAPH)
  value, grads = jax.jit(jax.value_and_grad(f))(la)
  assert 0.0 < value < 1.0
  np.testing.assert_allclose(value, f(la), rtol=1e-6)
  for name, g in grads.items():
    assert jnp.all(g > 0), name  # opening any gate costs


def test_penalty_refuses_unknown_kinds_and_is_zero_without_gates():
  with pytest.raises(UserError, match="flops"):
    accounting.penalty("flops", all_open(), GRAPH)
  assert accounting.penalty("macs", {}, GRAPH) == 0.0
