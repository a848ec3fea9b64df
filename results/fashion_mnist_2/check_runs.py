"""Every run of protocol 2 checked against PROTOCOL.md and its amendments, from its own files.

    python results/fashion_mnist_2/check_runs.py > results/fashion_mnist_2/check_runs.txt

For each run in runs/, bounded/ and equal_retraining/ that has a config.json: the fields its
arm fixes (the run it starts from and which checkpoint, epochs, milestones, seed, target or
mask, the gate settings), the data and recipe every arm shares, how many epochs `history.jsonl` holds, the checkout its
commands ran from (`sweep.log`'s `$` lines), and where `sweep.log` says its weights came from.
A mask at a budget run's cost is checked against the cost that run's gates had at its last epoch
(`history.jsonl`). Only config.json, history.jsonl and the lines of sweep.log above the first
`--mode=test` command are read: no test number.
"""

import json
import math
import pathlib
import re

HERE = pathlib.Path(__file__).parent
# The checkout each folder's arms run from (README.md, "The protocol's commit"): f511257 and
# 7bd9cad, as worktrees. Seeds 0-2's baselines are protocol 1's.
CHECKOUTS = {"runs": "/work/protocol/", "bounded": "/work/recipe/",
             "equal_retraining": "/work/protocol/"}
PROTOCOL_1_BASELINES = ("baseline_seed0", "baseline_seed1", "baseline_seed2")
SHARED = {"dataset": "fashion_mnist", "width_multiplier": 0.5, "batch_size": 128,
          "learning_rate": 0.003, "lr_factor": 0.1, "compute_dtype": "float32", "val_split": "hash",
          "model": "googlenet"}
MASK_EPOCHS = {"num_epochs": 15, "lr_milestones": [10, 12]}
ARMS = {  # the run's kind: what its config must hold, beyond SHARED and its seed
    "baseline": {"num_epochs": 20, "lr_milestones": [13, 17], "use_gate": False},
    "control": {"num_epochs": 15, "lr_milestones": [10, 12], "use_gate": False,
                "init_checkpoint": "last"},
    "budget": {"num_epochs": 10, "lr_milestones": [7, 8], "gate_lr_scale": 10.0,
               "train_gates": True, "init_checkpoint": "last", "multiplier_learning_rate": 0.02},
    "retrain": {"num_epochs": 5, "lr_milestones": [3, 4], "train_gates": False,
                "init_checkpoint": "last"},
    **{mask: {**MASK_EPOCHS, "mask": mask, "train_gates": False, "init_checkpoint": "last"}
       for mask in ("decided", "random_widths", "random", "l1_norm_relative")},
}
# The amendment of 20:45 UTC: arms 1b and 4b gate the reduce layers, and 1b bounds log_alpha.
BOUNDED = {"budget": {"log_alpha_bound": 4.6, "gate_reduce": True, "multiplier_cost": "expected"},
           "retrain": {"gate_reduce": True},
           "random": {"gate_reduce": True}, "l1_norm_relative": {"gate_reduce": True}}
REGISTERED = {"budget": {"log_alpha_bound": (None, 0.0), "gate_reduce": (None, False)}}
# The equal-retraining view: arms 2-4 trained for the R = 5 epochs arm 1 retrains.
EQUAL = {mask: {"num_epochs": 5, "lr_milestones": [3, 4]}
         for mask in ("decided", "random_widths", "random", "l1_norm_relative")}
CHANGES = {"runs": REGISTERED, "bounded": BOUNDED, "equal_retraining": EQUAL}
NAME = re.compile(r"(?P<kind>[a-z_0-9]+?)(_macs(?P<budget>[0-9.]+))?_seed(?P<seed>\d+)")


def history(run: pathlib.Path) -> list[dict]:
  path = run / "history.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def training_log(run: pathlib.Path) -> list[str]:
  """sweep.log's lines above its first test command."""
  lines = (run / "sweep.log").read_text().splitlines() if (run / "sweep.log").exists() else []
  test = next((i for i, l in enumerate(lines) if l.startswith("$") and "--mode=test" in l),
              len(lines))
  return lines[:test]


def expected(folder: str, kind: str, budget: str | None, seed: int) -> dict:
  """What the protocol fixes for the run `kind` of `budget` and `seed` in `folder`."""
  want = {**SHARED, **ARMS[kind], "seed": seed, **CHANGES[folder].get(kind, {})}
  if kind != "baseline":  # from its seed's baseline; retraining, from its budget run
    want["init_from"] = (f"budget_macs{budget}_seed{seed}" if kind == "retrain"
                         else f"baseline_seed{seed}")
  if kind == "budget":
    want["target_macs"] = float(budget)
  if kind in ("decided", "random_widths"):
    want["mask_from"] = f"budget_macs{budget}_seed{seed}"
    want["target_macs"] = 0.0
  return want


def deviations(run: pathlib.Path, folder: str) -> list[str]:
  match = NAME.fullmatch(run.name)
  if not match or match["kind"] not in ARMS:
    return ["a run the protocol does not name"]
  kind, budget, seed = match["kind"], match["budget"], int(match["seed"])
  config = json.loads((run / "config.json").read_text())
  found = []
  for key, want in expected(folder, kind, budget, seed).items():
    have = config.get(key)
    if key in ("init_from", "mask_from"):
      have = pathlib.PurePath(have or "").name
    if not (have in want if isinstance(want, tuple) else have == want):
      found.append(f"{key}={have!r}, not {want!r}")
  if kind in ("random", "l1_norm_relative"):
    budget_history = history(HERE / folder / f"budget_macs{budget}_seed{seed}")
    realised = budget_history[-1]["train_test_time_macs_kept"] if budget_history else None
    if realised is None or not math.isclose(config["target_macs"], realised, abs_tol=1e-6):
      found.append(f"target_macs={config['target_macs']}, not its budget run's {realised}")
  log = training_log(run)
  commands = [l for l in log if l.startswith("$")]
  checkout = CHECKOUTS[folder] if run.name not in PROTOCOL_1_BASELINES else None
  if checkout and any(f" {checkout}main.py " not in l for l in commands):
    found.append(f"a command not run from {checkout}")
  if "init_from" in config and config["init_from"]:
    weights = next((l for l in log if "Network weights from" in l), "")
    if f"the {config['init_checkpoint']} checkpoint of {config['init_from']};" not in weights:
      found.append(f"sweep.log's weights not from {config['init_from']}'s "
                   f"{config['init_checkpoint']} checkpoint: {weights[-120:]!r}")
  epochs = [h["epoch"] for h in history(run)]
  if epochs != list(range(len(epochs))):
    found.append(f"history.jsonl's epochs {epochs}")
  return found


def main() -> None:
  for folder in CHECKOUTS:
    if not (HERE / folder).is_dir():
      continue
    for run in sorted((HERE / folder).iterdir()):
      if run.is_symlink() or not (run / "config.json").exists():
        continue
      config = json.loads((run / "config.json").read_text())
      epochs = len(history(run))
      starts = sum(l.startswith("$") for l in training_log(run))
      state = f"{epochs} of {config['num_epochs']} epochs, {starts} start(s)"
      found = deviations(run, folder)
      print(f"{folder}/{run.name}: {state}: " + ("as the protocol says" if not found else
                                                 "DIFFERS: " + "; ".join(found)))


if __name__ == "__main__":
  main()
