"""One-shot masks at a MACs budget: the cost they land at, and which channels they keep."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from l0jax import accounting, gates, masks, model, train

WIDTH = 0.25
ARCH = model.Architecture.at_width(WIDTH)
SHAPE = dict(image_hw=8, in_channels=3, num_classes=10)


def macs(counts):
  kept = {name: accounting.Kept(n, int(n > 0)) for name, n in counts.items()}
  return accounting.totals(accounting.count(ARCH, kept, **SHAPE))[1]


FULL_MACS = macs({name: c for name, c in zip(accounting.gate_names(ARCH),
                                            (c for b in ARCH.blocks for c in b.outputs))})


@pytest.fixture(scope="module")
def params():
  _, params, _ = train.create_network(tiny_config(width_multiplier=WIDTH), (8, 8, 3), 10)
  return params


@pytest.mark.parametrize("budget", [1.0, 0.5, 0.25, 0.1])
def test_counts_fit_the_budget_and_no_channel_more_would(budget):
  counts = masks.kept_counts(ARCH, budget, **SHAPE)
  assert macs(counts) <= budget * FULL_MACS
  full = dict(zip(accounting.gate_names(ARCH), (c for b in ARCH.blocks for c in b.outputs)))
  for name, n in counts.items():
    if n < full[name]:
      assert macs({**counts, name: n + 1}) > budget * FULL_MACS, name
  if budget == 1.0:
    assert counts == full


def test_l1_norm_keeps_the_largest_filters(params):
  log_alphas = masks.mask_log_alphas("l1_norm", params, ARCH, 0.5, key=jax.random.key(0), **SHAPE)
  counts = masks.kept_counts(ARCH, 0.5, **SHAPE)
  for name, norms in masks.filter_l1_norms(params).items():
    kept = log_alphas[name] == masks.KEPT
    assert kept.sum() == counts[name]
    assert np.all(gates.test_gate(log_alphas[name])[kept] == 1)
    assert np.all(gates.test_gate(log_alphas[name])[~kept] == 0)
    if 0 < kept.sum() < kept.size:
      assert norms[kept].min() >= norms[~kept].max(), name
  # The norm is of the conv that makes the gated channels: block 2's 3x3 branch, channel 0.
  kernel = np.asarray(params["blocks"][1]["branch3"]["conv"]["kernel"][...])
  assert masks.filter_l1_norms(params)["block2/3x3"][0] == pytest.approx(np.abs(kernel[..., 0]).sum())


def test_random_masks_keep_as_many_channels_elsewhere_and_follow_the_key(params):
  draw = lambda seed: masks.mask_log_alphas("random", params, ARCH, 0.25, key=jax.random.key(seed),
                                            **SHAPE)
  l1 = masks.mask_log_alphas("l1_norm", params, ARCH, 0.25, key=jax.random.key(0), **SHAPE)
  a, b, again = draw(0), draw(1), draw(0)
  for name in l1:
    assert (a[name] == masks.KEPT).sum() == (l1[name] == masks.KEPT).sum()
    np.testing.assert_array_equal(a[name], again[name])
  assert any(not np.array_equal(a[name], b[name]) for name in a)
  with pytest.raises(ValueError, match="unknown mask method"):
    masks.mask_log_alphas("magnitude", params, ARCH, 0.5, key=jax.random.key(0), **SHAPE)
