"""The CIFAR ResNets and VGGs: sizes counted by hand from the papers, shapes, shortcuts, pools."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l0jax import model, resnet, vgg
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


def test_vgg_depths_are_the_papers_weight_layers():
  for depth in vgg.STAGES:  # the paper's three dense layers are one here
    assert weight_layers(abstract(vgg.VGG, 10, 3, depth=depth)) == depth - 2


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
  conv = lambda stride: model.ConvBN(3, 4, 3, stride=stride, use_bias=False, dtype=jnp.float32,
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
  assert g.whole == {"stem", "head"} | {
      f"stage{s}/block{b}/conv2" for s in (1, 2, 3) for b in (1, 2, 3)}
