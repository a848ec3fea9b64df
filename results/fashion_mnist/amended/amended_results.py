"""The protocol's results with seed 0's amended runs in place: the table the claims are judged on again.

  python results/fashion_mnist/amended/amended_results.py
  python results/fashion_mnist/claims.py results/fashion_mnist/amended/results.json \
      > results/fashion_mnist/amended/claims.md

PROTOCOL.md's amendment of 2026-12-06 re-ran, from baseline_seed0's last
checkpoint, the five seed-0 runs that had started from its best (control,
both budget runs and their retraining). Each run of runs/results.json that
amended/ holds a tested re-run of is replaced by it; every other run is the
protocol's. The groups' means, spreads and paired differences are recomputed
by the sweep's own code, and amended/results.json, results.md and front.png
written. Refuses while any of the five has not finished.
"""

import json
import pathlib
import sys

from l0jax import sweep

HERE = pathlib.Path(__file__).parent
RUNS = HERE.parent / "runs"
AMENDED = ("control_seed0", "budget_macs0.5_seed0", "budget_macs0.25_seed0",
           "retrain_macs0.5_seed0", "retrain_macs0.25_seed0")


def amended(results: dict) -> dict:
  """`results` with each of `AMENDED` replaced by its re-run in this folder."""
  runs = [{**r, **sweep.measured(HERE / r["name"])} if r["name"] in AMENDED else r
          for r in results["runs"]]
  command = f"{results['command']}, then amended/amended_results.py: {', '.join(AMENDED)} from amended/"
  return sweep.summarise(runs, results["unfinished"], command)


if __name__ == "__main__":
  unfinished = [name for name in AMENDED if not sweep.is_finished(HERE / name)]
  if unfinished:
    sys.exit(f"amended_results.py: not finished yet: {', '.join(unfinished)}")
  try:
    protocol = json.loads((RUNS / sweep.RESULTS_FILE).read_text())
  except (OSError, ValueError) as e:
    sys.exit(f"amended_results.py: cannot read the protocol's results: {e}")
  sweep.write_results(HERE, amended(protocol))
  print(f"wrote {', '.join((sweep.RESULTS_FILE, sweep.TABLE_FILE, sweep.FRONT_FILE))} in {HERE}")
