"""Means, spreads and paired intervals over seeds, for comparing pruning methods honestly.

Each method is run with the same seeds as the control it is compared with,
so the comparison is paired: the per-seed difference removes what the seed
does to both (the baseline checkpoint they start from, the data order).
"""

import math
from typing import NamedTuple, Sequence

import numpy as np

# Two-sided 95% quantiles of Student's t, by degrees of freedom.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}


def t975(df: int) -> float:
  """Student's t at 0.975 (two-sided 95%): a table to 10 degrees of freedom, then the
  Cornish-Fisher expansion around the normal quantile (error below 1e-3 there)."""
  if df < 1:
    raise ValueError(f"an interval needs at least 2 values (df={df})")
  if df in _T975:
    return _T975[df]
  z = 1.959964
  return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
          + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


class Spread(NamedTuple):
  """Mean and sample standard deviation (n - 1) of the values over seeds."""

  mean: float
  sd: float
  n: int


def spread(values: Sequence[float]) -> Spread:
  values = np.asarray(values, np.float64)
  sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
  return Spread(float(values.mean()), sd, len(values))


class Interval(NamedTuple):
  """A paired difference's mean and its 95% interval (t over n - 1 degrees of freedom)."""

  mean: float
  low: float
  high: float
  n: int


def paired_interval(a: Sequence[float], b: Sequence[float]) -> Interval:
  """The mean of `a[i] - b[i]` with its 95% interval; `a` and `b` are in the same seed order."""
  if len(a) != len(b):
    raise ValueError(f"paired values need the same seeds: {len(a)} and {len(b)} values")
  d = spread(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  if d.n < 2:
    return Interval(d.mean, math.nan, math.nan, d.n)
  half = t975(d.n - 1) * d.sd / math.sqrt(d.n)
  return Interval(d.mean, d.mean - half, d.mean + half, d.n)
