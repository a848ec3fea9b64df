"""Training the kept channels alone gives the masked network's step, for every built-in network."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from l0jax import accounting, compact_training, kept_channels, masks, networks, optimizer
from l0jax import pruning, run_config, sharding, train
from test_export import randomize

NETWORKS = {"googlenet": dict(model="googlenet", depth=0, width_multiplier=0.25),
            # Its reduce layers gated too: a branch narrowed inside.
            "googlenet_gate_reduce": dict(model="googlenet", depth=0, width_multiplier=0.25,
                                          gate_reduce=True),
            # The blocks' own gates and, shared, the stage widths' (adds and shortcuts too).
            "resnet_gate_residual": dict(model="resnet", depth=8, width_multiplier=1.0,
                                         gate_residual=True),
            "vgg": dict(model="vgg", depth=11, width_multiplier=0.125)}


def at(state, path):
  for key in path:
    state = state[key]
  return state


def random_network(config):
  """The configured network (8x8x3 images, 10 classes) and random (params, batch_stats), drawn
  in NumPy: without compiling the network's initialisation, which these tests do not test and
  which costs a GoogleNet seconds. (The smaller networks keep their own initialisation: on
  test_export's random BN statistics a VGG's gradients differ by more rounding.)"""
  network, abstract = networks.describe_network(config, (8, 8, 3), 10, [0.0], [1.0])
  _, params, batch_stats = nnx.split(randomize(abstract, lambda path, shape, rng: np.zeros(shape)),
                                     nnx.Param, nnx.BatchStat)
  return network, params, batch_stats


def fixed_gates(network, params, batch_stats, seed):
  """Gates fixed at a mix of kept, pruned and partly open (test-time gate in (0, 1)) channels,
  with one gate closed whole where that leaves the network connected (a GoogleNet's branch: its
  reduce conv is removed too)."""
  rng = np.random.default_rng(seed)
  log_alphas = {g.name: rng.choice([masks.KEPT, masks.PRUNED, 0.5], g.size).astype(np.float32)
                for g in network.graph.gates}
  closed = {**log_alphas, network.graph.gates[1].name: np.full(network.graph.gates[1].size,
                                                               masks.PRUNED, np.float32)}
  if accounting.connected(network.graph, accounting.deterministic_kept(closed)):
    log_alphas = closed
  return pruning.with_log_alphas(network, params, batch_stats, log_alphas)


@pytest.mark.parametrize("network_name", NETWORKS)
def test_the_kept_channels_train_as_the_masked_network(network_name):
  config = tiny_config(**NETWORKS[network_name], use_gate=True)
  network, params, batch_stats = (
      random_network(config) if network_name.startswith("googlenet")
      else networks.create_network(config, (8, 8, 3), 10, [0.0], [1.0]))
  params = fixed_gates(network, params, batch_stats, seed=0)
  kept = kept_channels.kept_channels(network.graph,
                                        pruning.log_alphas_of(network, params, batch_stats))
  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  labels = jnp.arange(4)

  def masked(params):  # As the training step computes it with the gates fixed.
    logits, stats, _ = network.apply(pruning.stop_gate_gradients(params), batch_stats, images, train=True)
    return loss(logits), (logits, stats)

  def compact(params):
    net = nnx.merge(network.graphdef, pruning.stop_gate_gradients(params), batch_stats, copy=True)
    logits = compact_training.apply(net, network.graph, kept, images)
    return loss(logits), (logits, nnx.state(net, nnx.BatchStat))

  loss = lambda logits: -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])
  grads_m, (logits_m, stats_m) = jax.jit(jax.grad(masked, has_aux=True))(params)
  grads_c, (logits_c, stats_c) = jax.jit(jax.grad(compact, has_aux=True))(params)
  assert logits_c.dtype == logits_m.dtype == jnp.float32
  np.testing.assert_allclose(logits_c, logits_m, rtol=1e-5, atol=1e-5)
  for g_c, g_m in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_m)):
    assert g_c.shape == g_m.shape
    np.testing.assert_allclose(g_c, g_m, rtol=1e-4, atol=1e-5 * float(np.abs(g_m).max() + 1))
  # A pruned channel's filter gets exactly 0 on both paths: AdamW moves it the same way.
  for layer in network.graph.layers:
    pruned = np.setdiff1d(np.arange(layer.c_out), kept.indices[layer.name])
    for grads in (grads_c, grads_m):
      assert not np.asarray(at(grads, layer.path)["kernel"][...])[..., pruned].any(), layer.name
  # Running statistics: the kept channels' updated as the masked step updates them, the
  # pruned channels' left where they were.
  for (path, s_c), s_m, s_0 in zip(jax.tree_util.tree_leaves_with_path(stats_c),
                                   jax.tree.leaves(stats_m), jax.tree.leaves(batch_stats)):
    moved = np.asarray(s_c) != np.asarray(s_0)
    np.testing.assert_allclose(np.asarray(s_c)[moved], np.asarray(s_m)[moved], rtol=1e-4,
                               atol=1e-6, err_msg=jax.tree_util.keystr(path))
  assert sum(int((np.asarray(c) != np.asarray(m)).sum()) for c, m in
             zip(jax.tree.leaves(stats_c), jax.tree.leaves(stats_m))) > 0  # some were pruned


def test_kept_channels_follow_the_test_time_gates_and_the_removed_layers():
  config = tiny_config(**NETWORKS["googlenet"], use_gate=True)
  network, params, batch_stats = random_network(config)
  params = fixed_gates(network, params, batch_stats, seed=0)
  log_alphas = pruning.log_alphas_of(network, params, batch_stats)
  kept = kept_channels.kept_channels(network.graph, log_alphas)
  costs = {c.name: c for c in accounting.count(network.graph,
                                               accounting.deterministic_kept(log_alphas))}
  for layer in network.graph.layers:
    assert kept.indices[layer.name].size == costs[layer.name].kept_out, layer.name
    if layer.gate is not None:
      open_ = np.flatnonzero(log_alphas[layer.gate] != masks.PRUNED)
      np.testing.assert_array_equal(kept.indices[layer.name], open_)
  assert any(kept.indices[l.name].size == 0 and l.gate is None for l in network.graph.layers)


def test_a_training_step_at_fixed_gates_is_the_masked_ones():
  config = tiny_config(use_gate=True, train_gates=False)
  network, params, batch_stats = networks.create_network(config, (8, 8, 3), 10, [127.0], [70.0])
  tx = optimizer.create_optimizer(config, optimizer.learning_rate_schedule(config, 10))
  step = functools.partial(train.train_step, network=network, tx=tx,
                           plan=run_config.gate_plan(config))
  params = fixed_gates(network, params, batch_stats, seed=1)
  state = train.TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))
  kept = pruning.computed_channels(network, state, compact_training=True)
  assert kept is not None and pruning.computed_channels(network, state, compact_training=False) is None
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), np.uint8))
  indices, valid = jnp.arange(8, dtype=jnp.int32).reshape(2, 4), jnp.ones(2, bool)
  after = {}
  for name, k in (("masked", None), ("compact", kept)):
    steps = train.make_train_steps(functools.partial(step, kept=k), sharding.data_mesh(),
                                   config.seed)
    after[name] = steps(jax.tree.map(jnp.copy, state), images, jnp.arange(8) % 10, indices, valid)
  (masked, masked_metrics), (compact, compact_metrics) = after["masked"], after["compact"]
  for key in masked_metrics:
    np.testing.assert_allclose(compact_metrics[key], masked_metrics[key], rtol=1e-5, err_msg=key)
  for c, m in zip(jax.tree.leaves(compact.params), jax.tree.leaves(masked.params)):
    np.testing.assert_allclose(c, m, rtol=1e-4, atol=1e-6)
