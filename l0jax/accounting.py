"""Exact parameter and MAC counts of a (gated) GoogleNet, per layer and in total (SPEC section 5).

The formulas are written once, in `count`, over the number of kept channels
of each gated branch output. That number is either an int (a channel is kept
when its test-time gate is > 0; `deterministic_kept`) or its expectation
under the gate distribution (`expected_kept`), a jnp scalar that
differentiates through to log_alpha, so the same counts serve the report
after training and the cost-weighted L0 penalty during it.

A 1x1 reduce conv whose branch is closed entirely feeds nothing and is
counted as removed (the export drops it too); in expectation, its outputs
count with the probability that any gate of its branch is open.
"""

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from l0jax import gates
from l0jax import model
from l0jax.errors import UserError

Count = int | float | jax.Array  # an int when deterministic, a jnp scalar when expected
PENALTIES = ("mean_gate", "params", "macs")


class Kept(NamedTuple):
  """What survives of one gated branch output."""

  channels: Count  # kept channels (or their expectation)
  alive: Count  # 1 if any channel is kept, else 0 (or the probability of that)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One conv (or the dense head): its full shape and what is kept of it."""

  name: str
  kernel: int
  out_hw: int
  c_in: int
  c_out: int
  kept_in: Count
  kept_out: Count
  per_output: int = 3  # parameters besides weights: bias, BN scale and shift (the head: bias)

  @property
  def params(self) -> Count:
    return self.kept_in * self.kept_out * self.kernel**2 + self.per_output * self.kept_out

  @property
  def macs(self) -> Count:
    return self.kept_in * self.kept_out * self.kernel**2 * self.out_hw**2


def gate_names(arch: model.Architecture) -> list[str]:
  """Names of the gated outputs, as `model.GoogleNet.log_alphas` has them."""
  return [f"block{i + 1}/{branch}" for i in range(len(arch.blocks)) for branch in model.BRANCHES]


def pooled_hw(hw: int) -> int:
  """Spatial size after max-pool 3x3, stride 2, padding 1."""
  return (hw + 2 - 3) // 2 + 1


def count(arch: model.Architecture, kept: Mapping[str, Kept] | None, *, image_hw: int,
          in_channels: int, num_classes: int) -> list[Layer]:
  """Every conv and the head, in network order. `kept=None` (or a missing name): all kept."""
  kept = kept or {}
  if unknown := set(kept) - set(gate_names(arch)):
    raise ValueError(f"no gated outputs named {sorted(unknown)} in this architecture")
  hw = image_hw
  layers = [Layer("stem", 3, hw, in_channels, arch.stem, in_channels, arch.stem)]
  c_in, kept_in = arch.stem, arch.stem
  for i, spec in enumerate(arch.blocks):
    name = f"block{i + 1}"
    out1, out3, out5, out_pool = (kept.get(f"{name}/{branch}", Kept(c, 1))
                                  for branch, c in zip(model.BRANCHES, spec.outputs))
    layers += [
        Layer(f"{name}/branch1", 1, hw, c_in, spec.out1, kept_in, out1.channels),
        Layer(f"{name}/branch3_reduce", 1, hw, c_in, spec.red3, kept_in, spec.red3 * out3.alive),
        # Reads all of its reduce's outputs whenever it has an output at all.
        Layer(f"{name}/branch3", 3, hw, spec.red3, spec.out3, spec.red3, out3.channels),
        Layer(f"{name}/branch5_reduce", 1, hw, c_in, spec.red5, kept_in, spec.red5 * out5.alive),
        Layer(f"{name}/branch5", 5, hw, spec.red5, spec.out5, spec.red5, out5.channels),
        Layer(f"{name}/branch_pool", 1, hw, c_in, spec.out_pool, kept_in, out_pool.channels),
    ]
    c_in = sum(spec.outputs)
    kept_in = out1.channels + out3.channels + out5.channels + out_pool.channels
    if i in model.POOL_AFTER:
      hw = pooled_hw(hw)
  return layers + [Layer("head", 1, 1, c_in, num_classes, kept_in, num_classes, per_output=1)]


def test_time_kept(log_alphas: Mapping[str, jax.Array]) -> dict[str, Kept]:
  """Kept channels at test time, those whose test-time gate is > 0, as traceable jnp scalars."""
  kept = {name: jnp.sum(gates.test_gate(la) > 0) for name, la in log_alphas.items()}
  return {name: Kept(n, n > 0) for name, n in kept.items()}


def deterministic_kept(log_alphas: Mapping[str, jax.Array]) -> dict[str, Kept]:
  """`test_time_kept` as ints, for the report after training (needs concrete values)."""
  return {name: Kept(int(k.channels), int(k.alive))
          for name, k in test_time_kept(log_alphas).items()}


def all_closed(arch: model.Architecture) -> dict[str, Kept]:
  """Every gated channel pruned: what is left is the stem and the head (their biases)."""
  return {name: Kept(0, 0) for name in gate_names(arch)}


def expected_kept(log_alphas: Mapping[str, jax.Array]) -> dict[str, Kept]:
  """Expected kept channels under the training-time gates (independent), differentiable."""
  p = {name: gates.prob_open(la) for name, la in log_alphas.items()}
  return {name: Kept(jnp.sum(q), 1.0 - jnp.prod(1.0 - q)) for name, q in p.items()}


def totals(layers: Sequence[Layer]) -> tuple[Count, Count]:
  """(parameters, MACs) of the whole network."""
  return sum(l.params for l in layers), sum(l.macs for l in layers)


def penalties(log_alphas: Mapping[str, jax.Array], arch: model.Architecture, *, image_hw: int,
              in_channels: int, num_classes: int) -> dict[str, jax.Array]:
  """Every kind of L0 term (PENALTIES), jnp-traceable, from one expected count of the network.

  mean_gate: mean P(z != 0) over all gated channels (the PyTorch original's R, so its
  lambdas transfer); params / macs: expected kept fraction of the full
  network's parameters / MACs. No gates, no penalty.
  """
  if not log_alphas:
    return {kind: jnp.zeros(()) for kind in PENALTIES}
  shape = dict(image_hw=image_hw, in_channels=in_channels, num_classes=num_classes)
  return {
      "mean_gate": jnp.mean(jnp.concatenate([gates.prob_open(la) for la in log_alphas.values()])),
      **kept_fractions(arch, expected_kept(log_alphas), **shape),
  }


def kept_fractions(arch: model.Architecture, kept: Mapping[str, Kept] | None, *, image_hw: int,
                   in_channels: int, num_classes: int) -> dict[str, Count]:
  """{'params': ..., 'macs': ...}: the kept fractions of the full network's counts."""
  shape = dict(image_hw=image_hw, in_channels=in_channels, num_classes=num_classes)
  (params, macs), (params_full, macs_full) = (totals(count(arch, kept, **shape)),
                                              totals(count(arch, None, **shape)))
  return {"params": params / params_full, "macs": macs / macs_full}


def penalty(kind: str, log_alphas: Mapping[str, jax.Array], arch: model.Architecture, *,
            image_hw: int, in_channels: int, num_classes: int) -> jax.Array:
  """The L0 term of the loss of one kind (see `penalties`)."""
  if kind not in PENALTIES:
    raise UserError(f"unknown penalty {kind!r}; choose one of {', '.join(PENALTIES)}")
  return penalties(log_alphas, arch, image_hw=image_hw, in_channels=in_channels,
                   num_classes=num_classes)[kind]


def report(model_or_log_alphas: nnx.Module | Mapping[str, jax.Array],
           config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
           num_classes: int) -> dict[str, Any]:
  """JSON-able full and kept counts of the network after training, per layer and in total.

  `image_shape` is (height, width, channels) of the (square) input images.
  """
  log_alphas = (model_or_log_alphas.log_alphas() if isinstance(model_or_log_alphas, nnx.Module)
                else model_or_log_alphas)
  height, width, in_channels = image_shape
  if height != width:
    raise ValueError(f"the accounting assumes square images, not {height}x{width}")
  arch = model.Architecture.at_width(config.width_multiplier)
  shape = dict(image_hw=height, in_channels=in_channels, num_classes=num_classes)
  kept = deterministic_kept(log_alphas)
  layers, full = count(arch, kept, **shape), count(arch, None, **shape)
  (params_kept, macs_kept), (params_full, macs_full) = totals(layers), totals(full)
  return {
      "params_full": params_full,
      "params_kept": params_kept,
      "params_kept_fraction": params_kept / params_full,
      "macs_full": macs_full,
      "macs_kept": macs_kept,
      "macs_kept_fraction": macs_kept / macs_full,
      "flops_full": 2 * macs_full,
      "flops_kept": 2 * macs_kept,
      "gated_channels_full": sum(la.size for la in log_alphas.values()),
      "gated_channels_kept": sum(k.channels for k in kept.values()),
      "layers": [
          dict(name=l.name, kernel=l.kernel, out_hw=l.out_hw, c_in=l.c_in, c_out=l.c_out,
               kept_in=l.kept_in, kept_out=l.kept_out, params=l.params, macs=l.macs,
               params_full=f.params, macs_full=f.macs)
          for l, f in zip(layers, full)
      ],
  }


def format_table(summary: dict[str, Any]) -> str:
  """The report as a per-layer console table, then the totals."""
  header = (f"{'layer':<22} {'k':>2} {'hw':>3} {'in kept/full':>13} {'out kept/full':>13} "
            f"{'params':>9} {'of':>9} {'MACs':>12} {'of':>12}")
  rows = [header, "-" * len(header)]
  for l in summary["layers"]:
    rows.append(f"{l['name']:<22} {l['kernel']:>2} {l['out_hw']:>3} "
                f"{l['kept_in']:>6}/{l['c_in']:<6} {l['kept_out']:>6}/{l['c_out']:<6} "
                f"{l['params']:>9,} {l['params_full']:>9,} {l['macs']:>12,} {l['macs_full']:>12,}")
  rows.append("-" * len(header))
  rows.append(f"parameters {summary['params_kept']:,} of {summary['params_full']:,} "
              f"({summary['params_kept_fraction']:.1%} kept); "
              f"MACs {summary['macs_kept']:,} of {summary['macs_full']:,} "
              f"({summary['macs_kept_fraction']:.1%} kept); "
              f"gated channels {summary['gated_channels_kept']:,} of "
              f"{summary['gated_channels_full']:,}")
  return "\n".join(rows)
