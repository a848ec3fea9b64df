"""What settling did in each budget run of the controller pilots, from history.jsonl alone.

  python results/controller_pilot/settling.py

For each budget run here and in ../bound_pilot: the settings the pilots vary; the MACs kept
the epoch before the gates settled, at test time and expected (the cost the multipliers saw);
the gates open then, those settling closed (or opened, where the controller overshot) and, in a
bounded run, how many it closed sat at its bound (log_alpha within 1e-4 of it), where
`budgets.settle` orders tied gates by layer name and index, not by anything training learnt;
validation before and after settling, and its retrain's at its last epoch.
"""

import json
import math
import pathlib

import numpy as np

RESULTS = pathlib.Path(__file__).parent.parent
OPEN_AT, PRUNE_AT = math.log(11), -math.log(11)
SETTLE_EPOCH = 8  # round(0.75 * 10), as run_config.gate_plan makes it
VARIED = ("log_alpha_bound", "multiplier_learning_rate", "gate_reduce", "multiplier_cost")
BEFORE = {"multiplier_cost": "expected"}  # what runs made before a field existed did


def gates(record: dict) -> np.ndarray:
  return np.concatenate([np.asarray(v, np.float32) for v in record["log_alpha"].values()])


def history(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "history.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


for workdir in sorted([*RESULTS.glob("bound_pilot/budget_*"),
                       *RESULTS.glob("controller_pilot/budget_*")]):
  records = history(workdir)
  name = f"{workdir.parent.name}/{workdir.name}"
  if len(records) <= SETTLE_EPOCH:
    print(f"{name}: {len(records)} epochs, not settled yet")
    continue
  config = json.loads((workdir / "config.json").read_text())
  bound = config["log_alpha_bound"]
  before, after = gates(records[SETTLE_EPOCH - 1]), gates(records[SETTLE_EPOCH])
  closed = (before > PRUNE_AT) & (after <= PRUNE_AT)
  opened = (before <= PRUNE_AT) & (after > PRUNE_AT)  # where the controller overshot
  at_bound = before >= bound - 1e-4 if bound else np.zeros_like(before, bool)
  retrain = history(workdir.with_name(workdir.name.replace("budget_", "retrain_", 1)))
  settings = ", ".join(f"{k} {config.get(k, BEFORE.get(k))}" for k in VARIED)
  print(f"{name} ({settings}):\n"
        f"  MACs kept the epoch before settling "
        f"{records[SETTLE_EPOCH - 1]['train_test_time_macs_kept']:.1%} at test time, "
        f"{records[SETTLE_EPOCH - 1]['train_cost']:.1%} expected; "
        f"{int((before > PRUNE_AT).sum())} of {before.size} gates kept then "
        f"({int((before >= OPEN_AT).sum())} fully open, {int(at_bound.sum())} at the bound); "
        f"settling closed {int(closed.sum())}, {int((closed & at_bound).sum())} of them at the "
        f"bound, and opened {int(opened.sum())}; log_alpha of the kept ones: median "
        f"{np.median(before[before > PRUNE_AT]):.2f}, max {before.max():.2f}"
        + (f"; of those it closed: median {np.median(before[closed]):.2f}" if closed.any() else "")
        + "\n"
        f"  validation {records[SETTLE_EPOCH - 1]['val_accuracy']:.2%} -> "
        f"{records[SETTLE_EPOCH]['val_accuracy']:.2%} at settling, {records[-1]['val_accuracy']:.2%} "
        f"at its last epoch; retrained: "
        + (f"{retrain[-1]['val_accuracy']:.2%} ({len(retrain)} epochs)" if retrain else "not yet"))
