"""The CIFAR ResNets and VGGs: sizes counted by hand from the papers, shapes, shortcuts, pools."""

import concurrent.futures
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import GOOGLENET, run_main, tiny_config, tiny_flags
from l0jax import run_config
from l0jax import accounting, analysis, checkpoint_modes, export, googlenet, layers, networks
from l0jax import resnet, vgg, warm_start
from l0jax.errors import UserError
from test_export import randomize
from test_model import num_params, output_shape


def abstract(cls, *args, **kwargs):
  """A network of shapes only."""
  return nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))


def gate_sizes(net) -> list[int]:
  """The number of channels of each gate of `net`."""
  return [v.size for path, v in nnx.iter_graph(net) if path and path[-1] == "log_alpha"]


# conv3x3 without bias, then BN (scale and shift): the parameters of one conv of either network.
conv3 = lambda c_in, c_out: c_in * c_out * 9 + 2 * c_out
head = lambda c_in: c_in * 10 + 10  # dense to 10 classes


# He et al. 2016, section 4.2: a 3x3 stem of 16; 2n convs of 16; then 2n of 32 and 2n of 64,
# the first of each reading the previous stage's channels; option-A shortcuts have no weights.
RESNET_PARAMS = {
    20: conv3(3, 16) + 6 * conv3(16, 16) + conv3(16, 32) + 5 * conv3(32, 32)
        + conv3(32, 64) + 5 * conv3(64, 64) + head(64),
    56: conv3(3, 16) + 18 * conv3(16, 16) + conv3(16, 32) + 17 * conv3(32, 32)
        + conv3(32, 64) + 17 * conv3(64, 64) + head(64),
}
# Simonyan & Zisserman 2015, table 1 (A and D), the three dense layers replaced by one.
VGG_PARAMS = {
    11: conv3(3, 64) + conv3(64, 128) + conv3(128, 256) + conv3(256, 256) + conv3(256, 512)
        + 3 * conv3(512, 512) + head(512),
    16: conv3(3, 64) + conv3(64, 64) + conv3(64, 128) + conv3(128, 128) + conv3(128, 256)
        + 2 * conv3(256, 256) + conv3(256, 512) + 5 * conv3(512, 512) + head(512),
}

# MACs of one such conv on hw x hw outputs; the dense head's are its weights.
macs3 = lambda c_in, c_out, hw: c_in * c_out * 9 * hw * hw
RESNET_MACS = {  # 32x32, 16x16 and 8x8 maps; the first conv of stages 2 and 3 has stride 2
    20: macs3(3, 16, 32) + 6 * macs3(16, 16, 32) + macs3(16, 32, 16) + 5 * macs3(32, 32, 16)
        + macs3(32, 64, 8) + 5 * macs3(64, 64, 8) + 64 * 10,
    56: macs3(3, 16, 32) + 18 * macs3(16, 16, 32) + macs3(16, 32, 16) + 17 * macs3(32, 32, 16)
        + macs3(32, 64, 8) + 17 * macs3(64, 64, 8) + 64 * 10,
}
VGG_MACS = {  # each stage on its map: 32, 16, 8, 4, 2
    11: macs3(3, 64, 32) + macs3(64, 128, 16) + macs3(128, 256, 8) + macs3(256, 256, 8)
        + macs3(256, 512, 4) + macs3(512, 512, 4) + 2 * macs3(512, 512, 2) + 512 * 10,
    16: macs3(3, 64, 32) + macs3(64, 64, 32) + macs3(64, 128, 16) + macs3(128, 128, 16)
        + macs3(128, 256, 8) + 2 * macs3(256, 256, 8) + macs3(256, 512, 4)
        + 2 * macs3(512, 512, 4) + 3 * macs3(512, 512, 2) + 512 * 10,
}


@pytest.mark.parametrize("depth, params, gated", [
    (20, 269_722, 3 * (16 + 32 + 64)),  # one gate per channel inside each of 3 x 3 blocks
    (56, 853_018, 9 * (16 + 32 + 64)),
])
def test_resnet_parameter_counts_are_the_hand_counts(depth, params, gated):
  assert RESNET_PARAMS[depth] == params
  assert num_params(abstract(resnet.ResNet, 10, 3, depth=depth, use_gate=False)) == params
  net = abstract(resnet.ResNet, 10, 3, depth=depth)
  assert sum(gate_sizes(net)) == gated and len(gate_sizes(net)) == (depth - 2) // 2  # 3n blocks
  assert num_params(net) == params + gated


@pytest.mark.parametrize("depth, params, gated", [
    (11, 9_228_362, 64 + 128 + 2 * 256 + 4 * 512),  # every conv's outputs gated
    (16, 14_724_042, 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512),
])
def test_vgg_parameter_counts_are_the_hand_counts(depth, params, gated):
  assert VGG_PARAMS[depth] == params
  assert num_params(abstract(vgg.VGG, 10, 3, depth=depth, use_gate=False)) == params
  net = abstract(vgg.VGG, 10, 3, depth=depth)
  assert sum(gate_sizes(net)) == gated and len(gate_sizes(net)) == depth - 3  # convs
  assert num_params(net) == params + gated


def weight_layers(net) -> int:
  return sum(isinstance(m, (nnx.Conv, nnx.Linear)) for _, m in nnx.iter_graph(net))


@pytest.mark.parametrize("depth", [8, 20])
def test_a_resnets_depth_is_its_weight_layers(depth):
  assert weight_layers(abstract(resnet.ResNet, 10, 3, depth=depth)) == depth


def test_vgg_depths_are_the_papers_weight_layers_and_the_configs():
  assert tuple(vgg.STAGES) == run_config.VGG_DEPTHS
  for depth in vgg.STAGES:  # the paper's three dense layers are one here
    assert weight_layers(abstract(vgg.VGG, 10, 3, depth=depth)) == depth - 2


@pytest.mark.parametrize("model_name, depth, layers", [
    ("googlenet", 0, 50), ("resnet", 0, 20), ("resnet", 32, 32), ("vgg", 0, 9), ("vgg", 16, 14)])
def test_the_config_names_the_model_and_its_depth(model_name, depth, layers):
  config = tiny_config(model=model_name, depth=depth)
  run_config.validate(config)
  _, net = networks.channel_graph(config, (8, 8, 3), 10)
  assert weight_layers(net) == layers


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 28, 28, 1), (2, 7, 7, 3)])
@pytest.mark.parametrize("cls, depth", [(resnet.ResNet, 8), (vgg.VGG, 11)])
def test_forward_shapes(cls, depth, shape):
  net = abstract(cls, 7, shape[-1], depth=depth, width_multiplier=0.25)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  assert output_shape(net, x, train=False).shape == (2, 7)
  assert output_shape(net, x, train=True, gate_key=jax.random.key(0)).shape == (2, 7)


def test_closed_blocks_add_a_constant_to_the_shortcut():
  """With every gate closed a block's second conv reads zeros, and each block is
  relu(shortcut + its second BN of zeros): the input subsampled by 2 at a stage change and padded
  with zero channels after its own (option A), and nothing else."""
  net = randomize(abstract(resnet.ResNet, 10, 3, depth=8, width_multiplier=0.25),
                  lambda path, shape, rng: np.full(shape, -10.0))

  @nnx.jit
  def logits_and_shortcut(net, x):
    want = net.stem(x, False)
    for block in [block for stage in net.stages for block in stage]:
      shortcut = want[:, ::block.stride, ::block.stride]
      c_out = block.conv2.bn.scale.shape[0]
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, c_out - shortcut.shape[-1])))
      constant = block.conv2.bn(jnp.zeros((1, 1, 1, c_out)), use_running_average=True)
      want = nnx.relu(shortcut + constant)
    return net(x, train=False), net.head(jnp.mean(want, axis=(1, 2)))

  logits, want = logits_and_shortcut(net, jax.random.normal(jax.random.key(1), (2, 9, 9, 3)))
  np.testing.assert_allclose(logits, want, atol=1e-5)


def test_a_strided_conv_is_the_unstrided_one_at_even_pixels():
  """Output j of a stride-2 conv is centred on input 2j, the pixel the shortcut keeps."""
  conv = lambda stride: layers.ConvBN(3, 4, 3, stride=stride, use_bias=False, dtype=jnp.float32,
                                      bfloat16_matmuls=False, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  np.testing.assert_allclose(conv(2)(x, False), conv(1)(x, False)[:, ::2, ::2], atol=1e-5)


def test_max_pool_2x2_rounds_up_like_same_padding():
  x = jax.random.normal(jax.random.key(0), (2, 7, 8, 3))
  np.testing.assert_array_equal(vgg.max_pool_2x2(x),
                                nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"))


@pytest.mark.parametrize("use_gate", [True, False])
@pytest.mark.parametrize("cls, depth, hw, sizes", [
    # the stem's and each stage's last block's outputs: 28, then halved (rounding up) twice
    (resnet.ResNet, 8, 28, {"stem": 28, "stage1/block1/add": 28, "stage2/block1/add": 14,
                            "stage3/block1/add": 7}),
    # after each stage's max-pool 2x2 (rounding up)
    (vgg.VGG, 11, 28, {"conv1": 28, "pool1": 14, "pool2": 7, "pool3": 4, "pool4": 2, "pool5": 1}),
])
def test_the_channel_graph_fits_the_module(cls, depth, hw, sizes, use_gate):
  net = abstract(cls, 10, 1, depth=depth, width_multiplier=0.25, use_gate=use_gate)
  g = net.channel_graph(hw)
  g.check(net)
  assert {name: g.out_hw(name) for name in sizes} == sizes
  assert [gate.size for gate in g.gates] == gate_sizes(net)
  assert len(g.layers) == depth if cls is resnet.ResNet else depth - 2


def test_a_resnets_residual_channels_are_whole_and_its_inner_ones_gated():
  g = abstract(resnet.ResNet, 10, 3, depth=20).channel_graph(32)
  assert {l.name for l in g.layers if l.gate} == {
      f"stage{s}/block{b}/conv1" for s in (1, 2, 3) for b in (1, 2, 3)}
  assert g.whole_layers == {"stem", "head"} | {
      f"stage{s}/block{b}/conv2" for s in (1, 2, 3) for b in (1, 2, 3)}


@pytest.mark.parametrize("overrides", [
    {"model": "vgg", "depth": 0}, {"model": "googlenet", "depth": 0}, {"use_gate": False}])
def test_gate_residual_is_refused_where_there_are_no_residual_gates_to_add(overrides):
  with pytest.raises(UserError, match="gate_residual=True gates a ResNet's stage widths: it "
                     "needs model='resnet' and use_gate=True"):
    run_config.validate(tiny_config(gate_residual=True, **overrides))


def test_gate_reduce_needs_gates():
  with pytest.raises(UserError, match="gate_reduce=True gates a GoogleNet's reduce layers: it "
                     "needs use_gate=True"):
    run_config.validate(tiny_config(gate_reduce=True, **GOOGLENET, use_gate=False))


@pytest.mark.parametrize("overrides", [{"model": "resnet", "depth": 8}, {"model": "vgg", "depth": 0}])
def test_gate_reduce_builds_the_same_network_where_there_are_no_reduce_layers(overrides):
  # So that a recipe can set it for GoogleNets without breaking the others.
  config = tiny_config(gate_reduce=True, **overrides)
  run_config.validate(config)
  graph, _ = networks.channel_graph(config, (8, 8, 3), 10)
  assert graph == networks.channel_graph(tiny_config(**overrides), (8, 8, 3), 10)[0]
  assert not warm_start.architecture_differences(tiny_config(**overrides), config)
  assert warm_start.architecture_differences(tiny_config(**GOOGLENET),
                                             tiny_config(**GOOGLENET, gate_reduce=True))


def test_gate_reduce_gates_each_blocks_reduce_layers_and_counts_them():
  graph, _ = networks.channel_graph(tiny_config(**GOOGLENET, gate_reduce=True), (8, 8, 3), 10)
  plain, _ = networks.channel_graph(tiny_config(**GOOGLENET), (8, 8, 3), 10)
  reduce_gates = {g.name: g.size for g in graph.gates if g.name.endswith("_reduce")}
  assert reduce_gates == {f"block{i}/{b}_reduce": c for i, spec in enumerate(
      googlenet.Architecture.at_width(0.25).blocks, 1) for b, c in (("3x3", spec.red3),
                                                                     ("5x5", spec.red5))}
  assert {g.name for g in graph.gates} - set(reduce_gates) == {g.name for g in plain.gates}
  gated = {l.name: l.gate for l in graph.layers if l.gate}
  assert gated["block1/branch3_reduce"] == "block1/3x3_reduce"
  # Block 1's 3x3 reduce gate closed whole: its layer and the 3x3 conv it feeds keep nothing,
  # and its open 5x5 reduce keeps all.
  kept = {g.name: accounting.Kept(0, 0) if g.name == "block1/3x3_reduce"
          else accounting.Kept(g.size, 1) for g in graph.gates}
  costs = {c.name: c for c in accounting.count(graph, kept)}
  assert costs["block1/branch3_reduce"].kept_out == costs["block1/branch3"].kept_in == 0
  assert costs["block1/branch3"].macs == 0
  assert costs["block1/branch5_reduce"].kept_out == reduce_gates["block1/5x5_reduce"]


def test_gate_residual_prunes_a_resnets_stage_widths_to_a_budget_through_main(tmp_path):
  """Two epochs of a ResNet-8 with its stage widths gated, pruned to half its MACs by the budget
  controller; then `--mode=test`'s counts and the export, in this process."""
  workdir = str(tmp_path / "run")
  result = run_main("--config=configs/gated.py", f"--workdir={workdir}", *tiny_flags(
      gate_residual=True, target_macs=0.5, synthetic_num_train=96))
  assert result.returncode == 0, result.stderr[-3000:]
  tested = checkpoint_modes.test_checkpoint(workdir)
  layers = {l["name"]: l for l in tested["layers"]}
  assert tested["macs_kept_fraction"] <= 0.5
  assert tested["gated_channels_full"] == (4 + 8 + 16) + (4 + 4 + 8)  # inner, then widths
  assert layers["stem"]["c_out"] == 4 and layers["stage3/block1/conv2"]["c_out"] == 16
  widths = [layers[name]["kept_out"] for name in ("stem", "stage1/block1/conv2")]
  assert widths[0] == widths[1] == layers["stage1/block1/conv1"]["kept_in"]
  exported = checkpoint_modes.export_checkpoint(workdir)
  assert exported["test_accuracy_compact"] == exported["test_accuracy_gated"]


@pytest.mark.parametrize("cls, depth, params, macs", [
    (resnet.ResNet, 20, 269_722, 40_551_040),  # SPEC section 8's MACs of option A
    (resnet.ResNet, 56, 853_018, 125_485_696),
    (vgg.VGG, 11, 9_228_362, 152_769_536),
    (vgg.VGG, 16, 14_724_042, 313_201_664),
])
def test_the_accounting_counts_the_full_networks_by_hand(cls, depth, params, macs):
  assert {resnet.ResNet: RESNET_MACS, vgg.VGG: VGG_MACS}[cls][depth] == macs
  g = abstract(cls, 10, 3, depth=depth).channel_graph(32)
  assert accounting.totals(accounting.count(g, None)) == (params, macs)


def kept(g, closed=(), one_closed=(), every=False):
  """Kept counts with the gates `closed` shut, one channel shut in each of `one_closed`."""
  counts = {gate.name: accounting.Kept(gate.size, 1) for gate in g.gates}
  for name in one_closed:
    counts[name] = accounting.Kept(counts[name].channels - 1, 1)
  for name in (counts if every else closed):
    counts[name] = accounting.Kept(0, 0)
  return counts


def cut(g, **closed) -> tuple[int, int]:
  """(parameters, MACs) that closing removes from the full network."""
  full, left = (accounting.totals(accounting.count(g, k)) for k in (None, kept(g, **closed)))
  return full[0] - left[0], full[1] - left[1]


def test_a_resnet_stays_connected_through_its_shortcuts_and_a_vgg_does_not():
  g = abstract(resnet.ResNet, 10, 3, depth=20).channel_graph(32)
  assert accounting.connected(g, kept(g, every=True))
  g = abstract(vgg.VGG, 10, 3, depth=11).channel_graph(32)
  assert accounting.connected(g, kept(g, one_closed=["conv5"]))
  assert not accounting.connected(g, kept(g, closed=["conv5"]))


def test_resnet_20_accounting_of_closed_gates_by_hand():
  g = abstract(resnet.ResNet, 10, 3, depth=20).channel_graph(32)
  # One channel of stage 1's first block: its filter (16 inputs, BN) and conv2's input row.
  assert cut(g, one_closed=["stage1/block1"]) == (
      (16 * 9 + 2) + 16 * 9, 2 * 16 * 9 * 32 * 32)
  # All of stage 2's second block: conv1 whole, conv2's weights; conv2's BN stays (a constant).
  assert cut(g, closed=["stage2/block2"]) == (
      (32 * 32 * 9 + 2 * 32) + 32 * 32 * 9, 2 * macs3(32, 32, 16))
  # Everything: the stem, every block's second BN, the head.
  left = accounting.totals(accounting.count(g, kept(g, every=True)))
  assert left == (RESNET_PARAMS[20] - cut(g, every=True)[0], 443_008)
  assert left == (conv3(3, 16) + 3 * 2 * (16 + 32 + 64) + head(64),
                  macs3(3, 16, 32) + 64 * 10)


def test_vgg_11_accounting_of_closed_gates_by_hand():
  g = abstract(vgg.VGG, 10, 3, depth=11).channel_graph(32)
  # One of conv3's 256 channels (8x8): its filter and BN, and conv4's input row.
  assert cut(g, one_closed=["conv3"]) == (
      (128 * 9 + 2) + 256 * 9, 128 * 9 * 64 + 256 * 9 * 64)
  # All of conv5 (4x4): its filters, and conv6's weights, which read nothing now.
  assert cut(g, closed=["conv5"]) == (
      conv3(256, 512) + 512 * 512 * 9, macs3(256, 512, 4) + macs3(512, 512, 4))
  # Everything: the head's bias.
  assert accounting.totals(accounting.count(g, kept(g, every=True))) == (10, 0)


@pytest.mark.parametrize("cls, closed", [
    (resnet.ResNet, ("stages", 2, 0)), (vgg.VGG, ("gates", 4))])
def test_compact_logits_equal_gated_test_time_logits_on_odd_sizes(cls, closed):
  """As tests/test_export.py checks on 12x12 images, on 9x9 ones: a ResNet's shortcut and a
  VGG's pools round odd sizes up. Random gates (pruned, partly and fully open), one block (or
  layer) closed."""
  hw = 9
  def log_alpha(path, shape, rng):
    if path[:len(closed)] == closed:
      return np.full(shape, -6.0)
    return rng.choice([-6.0, 0.0, 6.0], shape) + rng.uniform(-1.5, 1.5, shape)

  net = randomize(abstract(cls, 10, 3, depth={resnet.ResNet: 8, vgg.VGG: 11}[cls],
                           width_multiplier=0.25), log_alpha)
  g = net.channel_graph(hw)
  params = export.compact_params(net, g)
  x = jax.random.normal(jax.random.key(0), (4, hw, hw, 3))
  with jax.default_matmul_precision("highest"):
    want = nnx.jit(lambda net, x: net(x, train=False))(net, x)
    got = jax.jit(lambda p, x: export.compact_apply(g, p, x))(params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert export.num_params(params) < sum(
      x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))


def test_each_model_trains_through_main_then_tests_exports_and_analyses(tmp_path):
  """A few steps of the models the other tests' runs do not train (theirs is a ResNet-8), as a
  user starts them: a gated GoogleNet beside a gated VGG; then what `--mode=test`, `export` and
  `analyze` run, here in this process. The suite's only GoogleNet trained through main.py."""
  runs = {"GoogleNet": tiny_flags(**GOOGLENET, num_epochs=1),
          "VGG-11": tiny_flags(model="vgg", depth=11, num_epochs=1, synthetic_num_train=160)}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = {name: pool.submit(run_main, "--config=configs/gated.py",
                                 f"--workdir={tmp_path / name}", *flags)
               for name, flags in runs.items()}
  for name, future in futures.items():
    result = future.result()
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Network: {name} at width 0.25, gated" in result.stderr
  for workdir in (str(tmp_path / name) for name in runs):
    tested = checkpoint_modes.test_checkpoint(workdir)
    assert [l["name"] for l in tested["layers"]][-1] == "head"
    exported = checkpoint_modes.export_checkpoint(workdir)
    assert exported["test_accuracy_compact"] == exported["test_accuracy_gated"]
    assert "log_alpha_trajectories.png" in analysis.analyze(workdir)["files"]
