"""What settling did in each budget run of the pilot, from its history.jsonl alone.

  python results/bound_pilot/settling.py

For each run: the gates open at test time the epoch before the gates settled, those settling
closed, and, in a bounded run, how many of these sat at its bound (log_alpha within 1e-4 of
it), where `budgets.settle` orders tied gates by layer name and index, not by anything
training learnt.
"""

import json
import math
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).parent
OPEN_AT, PRUNE_AT = math.log(11), -math.log(11)
SETTLE_EPOCH = 8  # round(0.75 * 10), as run_config.gate_plan makes it


def gates(record: dict) -> np.ndarray:
  return np.concatenate([np.asarray(v, np.float32) for v in record["log_alpha"].values()])


for workdir in sorted(HERE.glob("budget_b*")):
  history = [json.loads(l) for l in (workdir / "history.jsonl").read_text().splitlines()]
  if len(history) <= SETTLE_EPOCH:
    print(f"{workdir.name}: {len(history)} epochs, not settled yet")
    continue
  bound = json.loads((workdir / "config.json").read_text())["log_alpha_bound"]
  before, after = gates(history[SETTLE_EPOCH - 1]), gates(history[SETTLE_EPOCH])
  closed = (before > PRUNE_AT) & (after <= PRUNE_AT)
  at_bound = before >= bound - 1e-4 if bound else np.zeros_like(before, bool)
  print(f"{workdir.name} ({f'bound {bound:g}' if bound else 'unbounded'}): "
        f"{int((before > PRUNE_AT).sum())} of {before.size} gates kept the epoch before "
        f"settling ({int((before >= OPEN_AT).sum())} fully open, {int(at_bound.sum())} at the "
        f"bound); settling closed {int(closed.sum())}, {int((closed & at_bound).sum())} of them "
        f"at the bound; log_alpha of the kept ones: median "
        f"{np.median(before[before > PRUNE_AT]):.2f}, max {before.max():.2f}; of those it "
        f"closed: median {np.median(before[closed]):.2f}")
