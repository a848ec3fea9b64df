"""The same gated GoogleNet in PyTorch, for `benchmarks/versus_pytorch.py` only.

Channel counts come from `l0jax.googlenet.Architecture`, so the two networks
cannot differ; the gates are the PyTorch original's hard-concrete gates drawn on the
device, one per example and channel of each block's output, as in l0jax.
PyTorch is not a dependency of l0jax: only this benchmark imports it.
"""

import math

import torch
from torch import nn

from l0jax import gates, googlenet


class ConvBN(nn.Sequential):
  def __init__(self, c_in: int, c_out: int, kernel: int):
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    super().__init__(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class InceptionBlock(nn.Module):
  def __init__(self, c_in: int, spec: googlenet.Inception, use_gate: bool, droprate_init: float):
    super().__init__()
    self.branch1 = ConvBN(c_in, spec.out1, 1)
    self.branch3 = nn.Sequential(ConvBN(c_in, spec.red3, 1), ConvBN(spec.red3, spec.out3, 3))
    self.branch5 = nn.Sequential(ConvBN(c_in, spec.red5, 1), ConvBN(spec.red5, spec.out5, 5))
    self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvBN(c_in, spec.out_pool, 1))
    mean = math.log(1 - droprate_init) - math.log(droprate_init)
    self.log_alpha = (nn.Parameter(mean + 0.01 * torch.randn(sum(spec.outputs)))
                      if use_gate else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)
    if self.log_alpha is None:
      return x
    if self.training:
      u = torch.rand(x.shape[0], self.log_alpha.numel(), device=x.device).clamp(
          gates.EPS, 1 - gates.EPS)
      s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / gates.BETA)
    else:
      s = torch.sigmoid(self.log_alpha)[None]
    z = (s * (gates.ZETA - gates.GAMMA) + gates.GAMMA).clamp(0, 1)
    return x * z[:, :, None, None].to(x.dtype)

  def prob_open(self) -> torch.Tensor:
    return torch.sigmoid(self.log_alpha - gates.BETA * math.log(-gates.GAMMA / gates.ZETA))


class GoogleNet(nn.Module):
  def __init__(self, num_classes: int, in_channels: int, use_gate: bool,
               width_multiplier: float = 1.0, droprate_init: float = 0.5):
    super().__init__()
    arch = googlenet.Architecture.at_width(width_multiplier)
    layers = [ConvBN(in_channels, arch.stem, 3)]
    self.blocks = []
    for i, (c_in, spec) in enumerate(zip(arch.block_inputs(), arch.blocks)):
      self.blocks.append(InceptionBlock(c_in, spec, use_gate, droprate_init))
      layers.append(self.blocks[-1])
      if i in googlenet.POOL_AFTER:
        layers.append(nn.MaxPool2d(3, 2, 1))
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(arch.head_inputs, num_classes)
    self.use_gate = use_gate

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head(self.features(x).mean((2, 3)))

  def l0(self) -> torch.Tensor:
    """The PyTorch original's penalty: the mean probability that a gate is open."""
    return torch.cat([b.prob_open() for b in self.blocks]).mean()
