"""Spreads and paired intervals against values worked by hand."""

import math

import pytest

from l0jax import stats


def test_spread_is_mean_and_sample_sd():
  s = stats.spread([0.90, 0.92, 0.94])
  assert s.mean == pytest.approx(0.92)
  assert s.sd == pytest.approx(0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
  assert s.n == 3
  assert math.isnan(stats.spread([0.9]).sd)


def test_paired_interval_by_hand():
  # Differences 0.1, 0.3, 0.2: mean 0.2, sd 0.1, half-width 4.303 * 0.1 / sqrt(3).
  i = stats.paired_interval([1.1, 1.3, 1.2], [1.0, 1.0, 1.0])
  half = 4.303 * 0.1 / math.sqrt(3)
  assert (i.mean, i.low, i.high, i.n) == pytest.approx((0.2, 0.2 - half, 0.2 + half, 3))
  # Pairing: a shift shared by both members of each pair does not widen the interval.
  shifted = stats.paired_interval([1.1, 2.3, 0.2], [1.0, 2.0, 0.0])
  assert (shifted.low, shifted.high) == pytest.approx((i.low, i.high))
  with pytest.raises(ValueError, match="same seeds"):
    stats.paired_interval([1.0, 2.0], [1.0])


def test_t_quantiles_table_and_expansion_agree_with_known_values():
  assert stats.t975(2) == 4.303
  assert stats.t975(20) == pytest.approx(2.086, abs=1e-3)
  assert stats.t975(60) == pytest.approx(2.000, abs=1e-3)
  assert stats.t975(11) == pytest.approx(2.201, abs=1e-3)
  with pytest.raises(ValueError):
    stats.t975(0)
