"""The post-hoc runs (PROTOCOL.md, amendments of 2026-12-03) with the protocol's, as results.

  python results/fashion_mnist/posthoc/posthoc_results.py
  python results/fashion_mnist/claims.py results/fashion_mnist/posthoc/results.json \
      > results/fashion_mnist/posthoc/claims.md

Run once the protocol's sweep has written runs/results.json. Each run there that
posthoc/ re-ran with the fix of ae3cd52 (a folder of the same name, tested) is
replaced by the re-run; every other run is the protocol's, the replay having
shown their settling unchanged (replay_settle.txt). Each tested run of a mask
kind only run post hoc (`ADDED_MASKS`: l1_norm_relative) is added beside the
protocol's mask run it matches (same budget, seed and recipe). The groups' means, spreads
and paired differences are recomputed by the sweep's own code, and
posthoc/results.json, results.md and front.png written. The masks matched the
cost of the protocol's budget runs, not the re-runs' (24.98% of the MACs
against 25.00% for budget_macs0.25_seed1). Being post hoc, these results
support no claim (the amendment); they are reported beside the protocol's.
"""

import json
import pathlib
import sys

from l0jax import sweep

HERE = pathlib.Path(__file__).parent
RUNS = HERE.parent / "runs"
# A mask kind run only post hoc, and the protocol's mask kind whose runs (budget, seed, recipe) it
# matches (the amendment of 2026-12-03 on the L1-norm ranking).
ADDED_MASKS = {"l1_norm_relative": "l1_norm"}


def with_reruns(results: dict, posthoc_dir: pathlib.Path) -> dict:
  """`results` with every run that `posthoc_dir` holds a tested re-run of replaced by it, and its
  tested runs of each post-hoc mask kind added, each recorded as the protocol's run it matches."""
  rerun = [r["name"] for r in results["runs"] if sweep.is_finished(posthoc_dir / r["name"])]
  runs = [{**r, **sweep.measured(posthoc_dir / r["name"])} if r["name"] in rerun else r
          for r in results["runs"]]
  added = []
  for r in results["runs"]:
    for kind, like in ADDED_MASKS.items():
      name = kind + r["name"].removeprefix(like)
      if r["kind"] == like and sweep.is_finished(posthoc_dir / name):
        added.append({**r, "name": name, "kind": kind, **sweep.measured(posthoc_dir / name)})
  command = (f"{results['command']}, then posthoc/posthoc_results.py: "
             f"{', '.join(rerun) or 'nothing'} from posthoc/"
             + "".join(f", {r['name']} added" for r in added))
  return sweep.summarise(runs + added, results["unfinished"], command)


if __name__ == "__main__":
  try:
    protocol = json.loads((RUNS / sweep.RESULTS_FILE).read_text())
  except (OSError, ValueError) as e:
    sys.exit(f"posthoc_results.py: cannot read the protocol's results: {e}")
  sweep.write_results(HERE, with_reruns(protocol, HERE))
  print(f"wrote {', '.join((sweep.RESULTS_FILE, sweep.TABLE_FILE, sweep.FRONT_FILE))} in {HERE}")
