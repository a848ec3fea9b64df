r"""Pruning a ResNet-18 written independently of l0jax to a MAC budget, end to end.

    python examples/resnet18.py --export_dir=/tmp/resnet18_export --target_macs=0.5

`ResNet18` is the CIFAR ResNet-18 of kuangliu/pytorch-cifar translated to
Flax NNX, with nothing of l0jax in it: a 3x3 stem, four stages of two
`BasicBlock`s (widths 64, 128, 256 and 512 times `--width`, strides 1, 2, 2,
2), a 1x1 conv + BN projection shortcut wherever a block changes the shape,
the global average pool and a dense head. `l0jax.gate_network` gates the
first conv of every block; the outputs of the stem, the second convs and the
projections are tied by the residual adds and stay whole.

The budget is l0jax's own controller, the one the command line's
`--config.target_macs` runs (`l0jax.budgets`; the top-level API does not
re-export it, so the script imports the module): the L0 term is the
Lagrangian l1 (c - t) + l2 (c - t)^2 of c, the expected kept fraction of
MACs, and t, a target that falls from 1 to `--target_macs` over the first
half of the steps, while the multipliers ascend their gradient. Then
`budgets.settle` settles the gates for a test-time cost at most the target,
and the weights train on with the gates fixed. The script prints the cost
table, the kept fraction of MACs, and exports the compact network, checked
as `examples/custom_cnn.py` does.

By default it takes a minute or two of CPU time: width 1/8 (widths 8 to 64) on
random images of Fashion-MNIST's shape, 28x28x1, labelled by brightness.
"""

import argparse
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import l0jax
from custom_cnn import Data, export_and_check, run, synthetic_data, train_step
from l0jax import budgets

LEARNING_RATE = 0.05
# Far above the command line's 0.02: in the example's few steps the multipliers must grow fast
# enough to move the gates before they settle.
MULTIPLIER_LEARNING_RATE = 0.3
DROPRATE_INIT = 0.5  # the gates' initial odds of closing


class BasicBlock(nnx.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus the input or its 1x1 conv + BN projection, then ReLU."""

  def __init__(self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs):
    conv = functools.partial(nnx.Conv, use_bias=False, rngs=rngs)
    self.conv1 = conv(c_in, c_out, (3, 3), strides=stride, padding=1)
    self.bn1 = nnx.BatchNorm(c_out, rngs=rngs)
    self.conv2 = conv(c_out, c_out, (3, 3), padding=1)
    self.bn2 = nnx.BatchNorm(c_out, rngs=rngs)
    if stride != 1 or c_in != c_out:
      self.shortcut = conv(c_in, c_out, (1, 1), strides=stride, padding=0)
      self.shortcut_bn = nnx.BatchNorm(c_out, rngs=rngs)
    else:
      self.shortcut = self.shortcut_bn = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    bn = lambda norm, y: norm(y, use_running_average=not train)
    out = nnx.relu(bn(self.bn1, self.conv1(x)))
    out = bn(self.bn2, self.conv2(out))
    shortcut = x if self.shortcut is None else bn(self.shortcut_bn, self.shortcut(x))
    return nnx.relu(out + shortcut)


class ResNet18(nnx.Module):
  """kuangliu/pytorch-cifar's ResNet-18: 3x3 stem, [2, 2, 2, 2] BasicBlocks, mean, dense."""

  def __init__(self, width: float = 1.0, in_channels: int = 3, num_classes: int = 10, *,
               rngs: nnx.Rngs):
    widths = [max(1, round(64 * width * 2**i)) for i in range(4)]
    self.conv1 = nnx.Conv(in_channels, widths[0], (3, 3), padding=1, use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(widths[0], rngs=rngs)
    c_in, layers = widths[0], []
    for c_out, stride in zip(widths, (1, 2, 2, 2)):
      layers.append(nnx.List([BasicBlock(c_in, c_out, stride, rngs=rngs),
                              BasicBlock(c_out, c_out, 1, rngs=rngs)]))
      c_in = c_out
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.linear = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in layer:
        out = block(out, train=train)
    # The port's avg_pool2d(out, 4) on CIFAR's 4x4 maps: the mean over the map, at any size.
    return self.linear(jnp.mean(out, axis=(1, 2)))


def _no_l0_term(net: nnx.Module, _: Any) -> float:
  return 0.0


def prune_to_budget(gated: l0jax.GatedNetwork, graph: l0jax.Graph, data: Data, *,
                    target: float, steps: int, settled_steps: int) -> None:
  """Trains `gated` under the budget's Lagrangian for `steps`, settles its gates for the target,
  and trains its weights `settled_steps` more with those gates fixed."""
  # Each step is an epoch of the one batch: the gates settle after the last one.
  budget = budgets.Budget("macs", target, warmup_steps=steps // 2, settle_epoch=steps,
                          learning_rate=MULTIPLIER_LEARNING_RATE)
  lagrangian = budget.init()
  expected_macs = lambda net: l0jax.penalty(net, graph, "macs")
  l0_term = lambda net, args: budgets.lagrangian_term(args[0], expected_macs(net), args[1])
  cost_of = nnx.jit(expected_macs)
  optimizer = nnx.Optimizer(gated, optax.adam(LEARNING_RATE), wrt=nnx.Param)
  x = data.x
  for step in range(steps):
    t = budget.target_at(step)
    train_step(gated, optimizer, x, data.labels, jax.random.key(step), l0_term,
               (lagrangian.multipliers, t))
    lagrangian = budget.ascend(lagrangian, cost_of(gated), t)
  log_alphas = graph.log_alphas(gated)
  travel, _ = budgets.gate_travel(log_alphas, DROPRATE_INIT)
  print(f"under the Lagrangian, the expected kept fraction of MACs reached "
        f"{float(cost_of(gated)):.4f}; {travel}")
  graph.set_log_alphas(gated, budgets.settle(log_alphas, "macs", target, graph))
  # A fresh Adam without the gates: no gradient nor momentum moves them from where they settled.
  weights = nnx.Optimizer(gated, optax.adam(LEARNING_RATE),
                          wrt=nnx.All(nnx.Param, nnx.Not(l0jax.LogAlpha)))
  for _ in range(settled_steps):
    train_step(gated, weights, x, data.labels, None, _no_l0_term, None)


def main(export_dir: str, *, target_macs: float = 0.5, width: float = 0.125, image_hw: int = 28,
         in_channels: int = 1, steps: int = 80, settled_steps: int = 10, seed: int = 0
         ) -> dict[str, Any]:
  """Gates `ResNet18`, prunes it to `target_macs`, reports and exports it; returns the export's
  metrics and the kept fraction of MACs."""
  data = synthetic_data(64, image_hw, in_channels, 10, seed)
  net = ResNet18(width, in_channels, rngs=nnx.Rngs(seed))
  gated = l0jax.gate_network(net, data.x, rngs=nnx.Rngs(seed + 1), droprate_init=DROPRATE_INIT)
  graph = l0jax.trace_graph(gated, data.x)
  lowest = budgets.lowest_kept_fractions(graph)["macs"]
  if not lowest <= target_macs <= 1:
    raise l0jax.UserError(f"--target_macs={target_macs:g} is outside [{lowest:.4f}, 1]: with "
                          "every gate closed the ungated layers keep the lower bound")
  prune_to_budget(gated, graph, data, target=target_macs, steps=steps,
                  settled_steps=settled_steps)
  kept = l0jax.costs(gated, graph)["macs_kept_fraction"]
  print(f"kept {kept:.4f} of the MACs, target {target_macs:g}")
  return {**export_and_check(gated, graph, data, export_dir), "macs_kept_fraction": kept}


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--export_dir", required=True)
  parser.add_argument("--target_macs", type=float, default=0.5,
                      help="the kept fraction of the network's MACs to prune to")
  parser.add_argument("--width", type=float, default=0.125, help="times ResNet-18's widths")
  parser.add_argument("--image_hw", type=int, default=28)
  parser.add_argument("--in_channels", type=int, default=1)
  parser.add_argument("--steps", type=int, default=80, help="steps under the Lagrangian")
  parser.add_argument("--settled_steps", type=int, default=10,
                      help="steps with the gates settled and fixed")
  parser.add_argument("--seed", type=int, default=0)
  run(main, parser)
