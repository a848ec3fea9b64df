"""One-shot masks at a MACs budget: the cost they land at, and which channels they keep."""

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import GOOGLENET, tiny_config
from l0jax import accounting, gates, googlenet, masks, networks, resnet, run_config, vgg
from l0jax.errors import UserError
from test_export import randomize

WIDTH = 0.25
GRAPH = googlenet.channel_graph(googlenet.Architecture.at_width(WIDTH), use_gate=True, image_hw=8,
                                in_channels=3, num_classes=10)


def macs(kept):
  kept = {name: accounting.Kept(int(k.sum()), int(k.any())) for name, k in kept.items()}
  return accounting.totals(accounting.count(GRAPH, kept))[1]


@pytest.fixture(scope="module")
def params():
  """The tiny gated GoogleNet's parameters, random, from NumPy (no initialisation to compile)."""
  config = tiny_config(width_multiplier=WIDTH, **GOOGLENET)
  _, abstract = networks.channel_graph(config, (8, 8, 3), 10)
  net = randomize(abstract, lambda path, shape, rng: np.zeros(shape))
  return nnx.split(net, nnx.Param, nnx.BatchStat)[1]


def mask(method, budget, params, seed=0):
  log_alphas = masks.mask_log_alphas(method, params, GRAPH, "macs", budget,
                                     key=jax.random.key(seed))
  for la in log_alphas.values():
    z = np.asarray(gates.test_gate(la))
    assert set(np.unique(z)) <= {0.0, 1.0}
  return {name: la == masks.KEPT for name, la in log_alphas.items()}


@pytest.mark.parametrize("method", masks.BY_BUDGET)
@pytest.mark.parametrize("budget", [1.0, 0.5, 0.2])
def test_masks_fit_the_budget_and_no_pruned_channel_would(method, budget, params):
  kept = mask(method, budget, params)
  full = macs({name: np.ones_like(k) for name, k in kept.items()})
  assert macs(kept) <= budget * full
  for name, k in kept.items():
    for j in np.flatnonzero(~k):
      more = {**kept, name: k.copy()}
      more[name][j] = True
      assert macs(more) > budget * full, (name, j)
  if budget == 1.0:
    assert all(k.all() for k in kept.values())


def test_l1_norm_takes_channels_by_descending_filter_norm(params):
  kept = mask("l1_norm", 0.5, params)
  norms = masks.filter_l1_norms(params, GRAPH)
  by_norm = sorted(((name, j) for name, n in norms.items() for j in range(n.size)),
                   key=lambda c: -norms[c[0]][c[1]])
  expected = masks.keep_in_order(GRAPH, by_norm, "macs", 0.5)
  assert all(np.array_equal(kept[name], expected[name]) for name in kept)
  scores, flat = (np.concatenate(list(d.values())) for d in (norms, kept))
  assert np.median(scores[flat]) > np.median(scores[~flat])
  # The score is the L1 norm of the conv that makes the channel: block 2's 3x3 branch, channel 0.
  kernel = np.asarray(params["blocks"][1]["branch3"]["conv"]["kernel"][...])
  assert norms["block2/3x3"][0] == pytest.approx(np.abs(kernel[..., 0]).sum())


def test_random_masks_follow_the_key(params):
  a, b, again = (mask("random", 0.25, params, seed) for seed in (0, 1, 0))
  assert all(np.array_equal(a[name], again[name]) for name in a)
  assert not all(np.array_equal(a[name], b[name]) for name in a)
  with pytest.raises(ValueError, match="unknown mask method"):
    masks.mask_log_alphas("magnitude", params, GRAPH, "macs", 0.5, key=jax.random.key(0))
  assert run_config.MASKS == ("",) + masks.METHODS  # what a config may name


def test_a_mask_keeps_the_network_connected():
  g = nnx.eval_shape(lambda: vgg.VGG(10, 3, depth=11, width_multiplier=0.25,
                                     rngs=nnx.Rngs(0))).channel_graph(32)
  # Deep layers first, as raw filter norms rank a VGG: alone, the order keeps no channel of conv1.
  order = [(gate.name, j) for gate in reversed(g.gates) for j in range(gate.size)]
  counts = lambda kept: {name: accounting.Kept(int(k.sum()), int(k.any()))
                         for name, k in kept.items()}
  cost = lambda kept: accounting.kept_fractions(g, counts(kept))["macs"]
  kept = masks.keep_in_order(g, order, "macs", 0.5)
  assert accounting.connected(g, counts(kept))
  assert kept["conv1"].sum() == 1 and kept["conv1"][0]  # its best-placed channel
  assert kept["conv8"].all() and 0.49 < cost(kept) <= 0.5
  # Below what the reconnecting channels cost, the mask stays connected above the budget.
  tiny = masks.keep_in_order(g, order, "macs", 1e-4)
  assert accounting.connected(g, counts(tiny)) and cost(tiny) > 1e-4
  assert all(k.sum() == 1 for k in tiny.values())


def test_l1_norm_relative_ranks_each_layer_by_its_own_mean(params):
  """Scaling one layer's filters moves the raw ranking, never the relative one."""
  scaled = jax.tree.map(np.array, params)
  kernel = scaled["blocks"][1]["branch3"]["conv"]["kernel"]
  kernel[...] = 1000.0 * kernel[...]
  relatives = {}
  for budget in (0.5, 0.25):
    relative, relative_scaled = (mask("l1_norm_relative", budget, p) for p in (params, scaled))
    assert all(np.array_equal(relative[n], relative_scaled[n]) for n in relative)
    raw, raw_scaled = (mask("l1_norm", budget, p) for p in (params, scaled))
    assert raw_scaled["block2/3x3"].sum() > raw["block2/3x3"].sum()
    relatives[budget] = relative
  norms = masks.filter_l1_norms(params, GRAPH)
  relative_norms = {name: n / n.mean() for name, n in norms.items()}
  by_score = sorted(((name, j) for name, n in norms.items() for j in range(n.size)),
                    key=lambda c: -relative_norms[c[0]][c[1]])
  expected = masks.keep_in_order(GRAPH, by_score, "macs", 0.5)
  assert all(np.array_equal(relatives[0.5][n], expected[n]) for n in expected)


def test_masks_from_a_run_keep_its_channels_or_as_many_in_each_gate_at_random():
  rng = np.random.default_rng(0)
  kept = {g.name: rng.random(g.size) < 0.4 for g in GRAPH.gates}
  decided = masks.from_run_log_alphas("decided", kept, key=jax.random.key(0))
  assert all(np.array_equal(decided[name] == masks.KEPT, k) for name, k in kept.items())
  draw = lambda seed: {name: la == masks.KEPT for name, la in masks.from_run_log_alphas(
      "random_widths", kept, key=jax.random.key(seed)).items()}
  widths = draw(0)
  assert {n: int(k.sum()) for n, k in widths.items()} == {n: int(k.sum()) for n, k in kept.items()}
  assert any(not np.array_equal(widths[name], k) for name, k in kept.items())
  assert macs(widths) == macs(kept)  # the cost is the kept counts'
  assert all(np.array_equal(draw(0)[n], widths[n]) for n in kept)
  assert any(not np.array_equal(draw(1)[n], widths[n]) for n in kept)


@pytest.mark.parametrize("overrides, refusal", [
    (dict(mask="decided"), "it needs mask_from=WORKDIR_OF_A_GATED_RUN"),
    (dict(mask="random_widths", mask_from="/a/run", target_macs=0.5), "no target"),
    (dict(mask_from="/a/run", target_macs=0.0), "mask_from=/a/run makes a mask of a run's gates"),
])
def test_a_mask_from_a_run_takes_a_run_and_no_target(overrides, refusal):
  config = tiny_config(init_from="/the/baseline", train_gates=False, **overrides)
  with pytest.raises(UserError, match=refusal):
    run_config.validate(config)
  run_config.validate(tiny_config(init_from="/the/baseline", train_gates=False, mask="decided",
                                  mask_from="/a/run"))


def test_a_shared_gates_filter_norm_adds_up_its_members_filters():
  net = randomize(nnx.eval_shape(lambda: resnet.ResNet(
      10, 3, depth=8, width_multiplier=0.25, gate_residual=True, rngs=nnx.Rngs(0))),
      lambda path, shape, rng: np.zeros(shape))
  norms = masks.filter_l1_norms(nnx.state(net, nnx.Param), net.channel_graph(8))
  conv2 = lambda s: np.abs(np.asarray(net.stages[s][0].conv2.conv.kernel[...]))
  # Stage 2's added channels (4 to 8) are made by stage 2's and stage 3's second convs.
  assert norms["stage2/width"] == pytest.approx(
      sum(conv2(s)[..., 4:8].sum(axis=(0, 1, 2)) for s in (1, 2)))
  assert norms["stage1/width"].shape == (4,) and norms["stage3/width"].shape == (8,)
