"""results/fashion_mnist/claims.py: PROTOCOL.md's rules on groups made as the sweep makes them."""

import importlib.util
import json
import os

import pytest

from conftest import REPO
from l0jax.sweep import planning, reporting



def load(*path):
  """A results script as a module."""
  spec = importlib.util.spec_from_file_location(path[-1][:-3], os.path.join(REPO, *path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


claims = load("results", "fashion_mnist", "claims.py")
posthoc_results = load("results", "fashion_mnist", "posthoc", "posthoc_results.py")

KINDS = {"baseline": "baseline", "control": "control", "retrain_macs0.5": "retrain",
         "retrain_macs0.25": "retrain", "l1_norm_macs0.25": "l1_norm",
         "random_macs0.25": "random", "l1_norm_relative_macs0.25": "l1_norm_relative"}


def results(**accuracies):
  """results.json's command and groups for runs with these test accuracies, seed by seed."""
  runs = [{"name": f"{name}_seed{seed}", "kind": KINDS[name], "seed": seed, "target": None,
           "target_kind": None, "lambda_l0": None, "test_accuracy": accuracy,
           "val_accuracy": accuracy, "macs_kept_fraction": 0.5, "params_kept_fraction": 0.6}
          for name, values in accuracies.items() for seed, accuracy in enumerate(values)]
  return {"command": "python -m l0jax.sweep ...", "groups": reporting.seed_groups(runs)}


def protocol(**changes):
  accuracies = {"baseline": [0.931, 0.932, 0.933], "control": [0.935, 0.936, 0.934],
                "retrain_macs0.5": [0.933, 0.934, 0.932],  # -0.2 pp each seed
                "retrain_macs0.25": [0.90, 0.91, 0.92],  # mean 91.0, sd 1.0
                "l1_norm_macs0.25": [0.88, 0.89, 0.90],  # 2.0 pp below, more than the sd
                "random_macs0.25": [0.905, 0.90, 0.91]}  # 0.5 pp below, less than the sd
  return results(**{**accuracies, **changes})


def test_each_claim_is_judged_by_the_protocols_rule():
  verdicts = lambda r: (claims.claim_1(r)[0], claims.claim_2(r, "l1_norm")[0],
                        claims.claim_2(r, "random")[0], claims.baseline_level(r)[0])
  assert verdicts(protocol()) == ("met and supported", "met", "not met", True)
  # Mean -0.2 pp, but its interval reaches below -0.3 pp.
  wide = protocol(**{"retrain_macs0.5": [0.934, 0.931, 0.934]})
  assert claims.claim_1(wide)[0] == "met, not supported"
  assert claims.claim_1(protocol(**{"retrain_macs0.5": [0.931, 0.932, 0.930]}))[0] == "not met"
  low = protocol(baseline=[0.929, 0.930, 0.930])
  assert claims.baseline_level(low)[0] is False
  assert claims.report(low).splitlines()[4].startswith("**Caveat on every claim: the baseline")


def test_a_group_without_every_seed_is_not_judged_yet():
  partial = protocol(**{"l1_norm_macs0.25": [0.88, 0.89]})
  assert claims.claim_2(partial, "l1_norm")[0] == "not judged yet"
  assert claims.claim_2(partial, "random")[0] == "not met"  # Its groups have every seed.
  report = claims.report(partial)
  assert "**C2 against L1-norm: not judged yet.**" in report
  assert "**C1: met and supported.** L0 93.30% +- 0.10" in report


def test_the_posthoc_mask_is_judged_beside_the_claims_only_where_it_ran():
  assert "Post hoc" not in claims.report(protocol())
  report = claims.report(protocol(**{"l1_norm_relative_macs0.25": [0.905, 0.91, 0.915]}))
  assert ("supports no claim)*: **C2's rule against L1-norm relative to each layer: not met.** "
          "L0 91.00% +- 1.00") in report


def finished_run(workdir, test_accuracy, val_accuracies):
  """A finished run's workdir: its test metrics (of the sweep's checkpoint) and history."""
  workdir.mkdir()
  (workdir / "test_metrics.json").write_text(json.dumps({
      "checkpoint": planning.CHECKPOINT, "dataset": "fashion_mnist",
      "test_accuracy": test_accuracy, "checkpoint_step": 2105, "params_full": 10,
      "params_kept": 5, "params_kept_fraction": 0.5, "macs_full": 100, "macs_kept": 25,
      "macs_kept_fraction": 0.25}))
  (workdir / "history.jsonl").write_text("".join(
      json.dumps({"epoch": e, "step": 421 * (e + 1), "val_accuracy": v, "epoch_seconds": 10.0})
      + "\n"
      for e, v in enumerate(val_accuracies)))


def test_the_posthoc_results_replace_the_reruns_and_add_the_posthoc_masks(tmp_path):
  run = lambda name, seed, accuracy: {
      "name": f"{name}_seed{seed}", "kind": name.split("_macs")[0], "seed": seed,
      "target": ("macs", 0.25), "target_kind": "macs", "lambda_l0": None,
      "dataset": "fashion_mnist", "test_accuracy": accuracy, "val_accuracy": accuracy,
      "macs_kept_fraction": 0.25, "params_kept_fraction": 0.5}
  runs = [run("baseline", 0, 0.93), run("baseline", 1, 0.94),
          run("budget_macs0.25", 0, 0.85), run("budget_macs0.25", 1, 0.10),
          run("retrain_macs0.25", 0, 0.91), run("retrain_macs0.25", 1, 0.12),
          run("l1_norm_macs0.25", 0, 0.89), run("l1_norm_macs0.25", 1, 0.88)]
  protocol = reporting.summarise(runs, ["random_macs0.25_seed1"], "python -m l0jax.sweep ...")
  finished_run(tmp_path / "budget_macs0.25_seed1", 0.78, [0.7, 0.77])
  (tmp_path / "retrain_macs0.25_seed1").mkdir()  # Not tested: not a re-run.
  finished_run(tmp_path / "l1_norm_relative_macs0.25_seed0", 0.90, [0.905])
  (tmp_path / "l1_norm_relative_macs0.25_seed1").mkdir()  # Not tested: not added.
  posthoc = posthoc_results.with_reruns(protocol, tmp_path)
  changed = [(a["name"], b) for a, b in zip(protocol["runs"], posthoc["runs"]) if a != b]
  assert [name for name, _ in changed] == ["budget_macs0.25_seed1"]
  assert changed[0][1]["test_accuracy"] == 0.78 and changed[0][1]["val_accuracy"] == 0.77
  assert changed[0][1]["test_accuracy_change_pp"] == pytest.approx(-16.0)
  added = posthoc["runs"][len(runs):]
  assert [(r["name"], r["kind"], r["seed"], r["target"]) for r in added] == [
      ("l1_norm_relative_macs0.25_seed0", "l1_norm_relative", 0, ("macs", 0.25))]
  assert added[0]["test_accuracy_change_pp"] == pytest.approx(-3.0)
  groups = {g["name"]: g for g in posthoc["groups"]}
  assert groups["budget_macs0.25"]["test_accuracy"]["mean"] == pytest.approx(0.815)
  assert groups["retrain_macs0.25"] == {g["name"]: g for g in protocol["groups"]}[
      "retrain_macs0.25"]
  assert groups["l1_norm_relative_macs0.25"]["seeds"] == [0]
  assert posthoc["unfinished"] == ["random_macs0.25_seed1"]
  assert posthoc["command"].endswith(
      "budget_macs0.25_seed1 from posthoc/, l1_norm_relative_macs0.25_seed0 added")
