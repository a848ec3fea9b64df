"""The paired differences that the README's "beyond the claims" sentences quote, with their 95%
intervals, from the protocol's runs (seeds 0, 1, 2), by the sweep's own statistics.

  python results/fashion_mnist/beyond_claims.py > results/fashion_mnist/beyond_claims.txt
  python results/fashion_mnist/beyond_claims.py results/fashion_mnist/amended \
      > results/fashion_mnist/amended/beyond_claims.txt

With a folder, each run it holds a test of (amended/: seed 0's re-runs) replaces the protocol's.
"""

import json
import pathlib
import sys

from l0jax import stats

RUNS = pathlib.Path(__file__).parent / "runs"
SEEDS = (0, 1, 2)
PAIRS = {"random - L0 (retrained), 50% of the MACs": ("random_macs0.5", "retrain_macs0.5"),
         "random - L1-norm, 50%": ("random_macs0.5", "l1_norm_macs0.5"),
         "L0 (retrained) - L1-norm, 50%": ("retrain_macs0.5", "l1_norm_macs0.5"),
         "L0 from scratch - L0 (retrained), 50%": ("scratch_macs0.5", "retrain_macs0.5"),
         "control - baseline": ("control", "baseline")}


def accuracies(name: str, reruns: pathlib.Path | None) -> list[float]:
  def metrics(run: str) -> pathlib.Path:
    rerun = reruns and reruns / run / "test_metrics.json"
    return rerun if rerun and rerun.exists() else RUNS / run / "test_metrics.json"
  return [100 * json.loads(metrics(f"{name}_seed{s}").read_text())["test_accuracy"] for s in SEEDS]


if __name__ == "__main__":
  reruns = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else None
  for what, (a, b) in PAIRS.items():
    i = stats.paired_interval(accuracies(a, reruns), accuracies(b, reruns))
    print(f"{what}: {i.mean:+.2f} pp [{i.low:+.2f}, {i.high:+.2f}] (n={i.n})")
