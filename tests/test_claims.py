"""results/fashion_mnist/claims.py: PROTOCOL.md's rules on groups made as the sweep makes them."""

import importlib.util
import os

import pytest

from conftest import REPO
from l0jax import sweep

spec = importlib.util.spec_from_file_location(
    "claims", os.path.join(REPO, "results", "fashion_mnist", "claims.py"))
claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)

KINDS = {"baseline": "baseline", "control": "control", "retrain_macs0.5": "retrain",
         "retrain_macs0.25": "retrain", "l1_norm_macs0.25": "l1_norm",
         "random_macs0.25": "random"}


def results(**accuracies):
  """results.json's command and groups for runs with these test accuracies, seed by seed."""
  runs = [{"name": f"{name}_seed{seed}", "kind": KINDS[name], "seed": seed, "target": None,
           "target_kind": None, "lambda_l0": None, "test_accuracy": accuracy,
           "val_accuracy": accuracy, "macs_kept_fraction": 0.5, "params_kept_fraction": 0.6}
          for name, values in accuracies.items() for seed, accuracy in enumerate(values)]
  return {"command": "python -m l0jax.sweep ...", "groups": sweep.seed_groups(runs)}


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
