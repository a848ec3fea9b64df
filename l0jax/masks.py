"""One-shot channel masks at a MACs budget: the simple methods L0 pruning is compared with.

`l1_norm` is Li et al., *Pruning Filters for Efficient ConvNets* (ICLR
2017): in each gated layer, keep the output channels whose filters have the
largest L1 norm. `random` keeps channels drawn uniformly at random: the floor
any pruning method must beat. Both keep the same number of channels in every
gated output (the same fraction of each layer, the paper's uniform variant),
found as the largest that costs at most the budget, so that the two differ
only in *which* channels they keep.

A mask is a set of gate values: `log_alpha` of `KEPT` (test-time gate 1) or
`PRUNED` (test-time gate 0). Training with `train_gates=False` keeps them
fixed, as for retraining the network an L0 run pruned.
"""

from typing import Mapping

import jax
import numpy as np

from l0jax import accounting, model

METHODS = ("l1_norm", "random")
# Far enough past +-ln(11) that the test-time gate is exactly 1 or 0.
KEPT, PRUNED = 10.0, -10.0


def _kept_counts(channels: Mapping[str, int], fraction: float) -> dict[str, int]:
  return {name: int(round(fraction * c)) for name, c in channels.items()}


def _macs(arch: model.Architecture, counts: Mapping[str, int], shape: dict) -> int:
  kept = {name: accounting.Kept(n, int(n > 0)) for name, n in counts.items()}
  return accounting.totals(accounting.count(arch, kept, **shape))[1]


def kept_counts(arch: model.Architecture, budget: float, *, image_hw: int, in_channels: int,
                num_classes: int) -> dict[str, int]:
  """Kept channels per gated output, costing at most `budget` of the full network's MACs.

  First the same fraction of every gated output, the largest whose rounded
  counts fit (costs only grow with it, so the fractions where a count steps
  up are scanned from the top); then, in network order and round after
  round, one more channel for each output while it still fits, so that the
  cost lands close under the budget even when layers are narrow.
  """
  shape = dict(image_hw=image_hw, in_channels=in_channels, num_classes=num_classes)
  channels = {name: c for name, c in zip(accounting.gate_names(arch),
                                         (c for b in arch.blocks for c in b.outputs))}
  full = _macs(arch, channels, shape)
  # round(f * c) steps up at f = (k - 0.5) / c; between steps the counts are constant.
  candidates = sorted({1.0} | {(k - 0.5) / c for c in channels.values() for k in range(1, c + 1)},
                      reverse=True)
  counts = next((counts for counts in map(lambda f: _kept_counts(channels, f), candidates)
                 if _macs(arch, counts, shape) <= budget * full), _kept_counts(channels, 0.0))
  grown = True
  while grown:
    grown = False
    for name, c in channels.items():
      more = {**counts, name: counts[name] + 1}
      if counts[name] < c and _macs(arch, more, shape) <= budget * full:
        counts, grown = more, True
  return counts


def filter_l1_norms(params) -> dict[str, np.ndarray]:
  """The L1 norm of the filter behind each gated output channel, by gate name.

  `params` is a GoogleNet's `nnx.Param` state; a gated output's channels are
  made by the last conv of its branch (`export.CHAINS`).
  """
  blocks = params["blocks"]
  norms = {}
  for i in sorted(blocks, key=int):
    for branch, conv in zip(model.BRANCHES, ("branch1", "branch3", "branch5", "branch_pool")):
      kernel = np.asarray(blocks[i][conv]["conv"]["kernel"][...])  # [k, k, c_in, c_out]
      norms[f"block{int(i) + 1}/{branch}"] = np.abs(kernel).sum(axis=(0, 1, 2))
  return norms


def mask_log_alphas(method: str, params, arch: model.Architecture, budget: float, *,
                    key: jax.Array, image_hw: int, in_channels: int,
                    num_classes: int) -> dict[str, np.ndarray]:
  """Gate values (`KEPT` or `PRUNED`) of a `method` mask at `budget` of the MACs, by gate name.

  `key` draws the `random` mask (one draw per gated output); `l1_norm` ignores it.
  """
  if method not in METHODS:
    raise ValueError(f"unknown mask method {method!r}; choose one of {', '.join(METHODS)}")
  counts = kept_counts(arch, budget, image_hw=image_hw, in_channels=in_channels,
                       num_classes=num_classes)
  norms = filter_l1_norms(params)
  keys = dict(zip(counts, jax.random.split(key, len(counts))))
  masks = {}
  for name, n in counts.items():
    c = norms[name].size
    if method == "l1_norm":
      # Largest first; a stable sort breaks ties by channel index.
      order = np.argsort(-norms[name], kind="stable")
    else:
      order = np.asarray(jax.random.permutation(keys[name], c))
    log_alpha = np.full(c, PRUNED, np.float32)
    log_alpha[order[:n]] = KEPT
    masks[name] = log_alpha
  return masks
