"""results/fashion_mnist_2/claims.py: protocol 2's rules on runs laid out as its sweep writes them."""

import json

import pytest

from test_claims import load

claims = load("results", "fashion_mnist_2", "claims.py")

CONTROL = [93.6, 93.5, 93.7, 93.4, 93.6]


@pytest.fixture
def runs(tmp_path, monkeypatch):
  """Writes each named run's test accuracies (%, seed by seed) as test_metrics.json files."""
  monkeypatch.setattr(claims, "RUNS", tmp_path / "runs")
  monkeypatch.setattr(claims, "BOUNDED", tmp_path / "bounded")
  monkeypatch.setattr(claims, "EQUAL", tmp_path / "equal_retraining")
  monkeypatch.setattr(claims, "L0_ARM", "decided")

  def write(**accuracies):
    for name, values in accuracies.items():
      for seed, accuracy in zip(claims.SEEDS, values):
        run = claims.run_dir(name, seed)
        run.mkdir(parents=True, exist_ok=True)
        (run / "test_metrics.json").write_text(json.dumps(
            {"test_accuracy": accuracy / 100, "macs_kept_fraction": 0.1,
             "params_kept_fraction": 0.2}))
  return write


def shifted(values, pp):
  return [v + pp for v in values]


def every_arm(budget, pp, **changes):
  """Every pruned arm at `budget`, `pp` from the control seed by seed, but the arms `changes`
  gives values of."""
  return {f"{arm}_macs{budget}": changes.get(arm, shifted(CONTROL, pp)) for arm in claims.ARMS}


def test_c4_needs_both_intervals_above_zero(runs):
  runs(control=CONTROL, **every_arm(0.1, -5.0, decided=shifted(CONTROL, -4.0)))
  assert claims.claim_4().startswith("met.")
  # Ahead of L1-norm relative on average (+0.7 pp), but its interval reaches below 0.
  runs(**{"l1_norm_relative_macs0.1": shifted(CONTROL, -5.0)[:4] + [CONTROL[4] - 3.5]})
  assert claims.interval("decided_macs0.1", "l1_norm_relative_macs0.1").mean == pytest.approx(0.7)
  assert claims.claim_4().startswith("not met.")


def test_c5_names_the_largest_reduction_within_the_margin(runs):
  runs(control=CONTROL, **every_arm(0.1, -3.0), **every_arm(0.25, -1.0),
       **every_arm(0.5, -0.5, random=shifted(CONTROL, -0.1)), **every_arm(0.75, 0.0))
  assert claims.claim_5().startswith("at 0.5 of the MACs: 4. uniform random")
  runs(**every_arm(0.1, -0.2))
  assert claims.claim_5().startswith("at 0.1 of the MACs: 1. L0")


def test_c5_is_judged_on_the_budgets_that_were_run(runs):
  runs(control=CONTROL, **every_arm(0.1, -3.0), **every_arm(0.25, -1.0))
  assert claims.claim_5() == "none of the budgets run (not run: 0.5, 0.75)"
  runs(**every_arm(0.25, -0.1))
  assert claims.claim_5().startswith("at 0.25 of the MACs: 1. L0")
  assert claims.claim_5().endswith("(not run: 0.5, 0.75)")


def test_unfinished_runs_leave_the_claims_unjudged(runs):
  runs(control=CONTROL, **every_arm(0.1, -3.0, decided=shifted(CONTROL, -2.0)[:4]))
  assert claims.claim_4().startswith("not judged yet")
  assert claims.claim_5().startswith("not judged yet")
  assert "0.25: retrain - decided (the noisy pruning phase): not judged yet" in claims.report()


def test_c6_and_the_baselines_caveat(runs):
  runs(control=CONTROL, baseline=shifted(CONTROL, -0.7),
       **every_arm(0.25, -1.0, retrain=shifted(CONTROL, -2.0)))
  report = claims.report()
  assert "**Caveat on every claim: the baselines reach 92.86% mean test accuracy" in report
  assert "  - 0.25: retrain - decided (the noisy pruning phase): -1.00 pp [-1.00, -1.00]" in report


def test_arms_1b_and_4b_are_read_from_bounded_and_judged_apart(runs, tmp_path):
  runs(control=CONTROL, **every_arm(0.1, -3.0), **{
      "bounded/retrain_macs0.1": shifted(CONTROL, -0.2),
      "bounded/random_macs0.1": shifted(CONTROL, -1.0),
      "bounded/l1_norm_relative_macs0.1": shifted(CONTROL, -0.1)})
  assert (tmp_path / "bounded" / "retrain_macs0.1_seed4" / "test_metrics.json").exists()
  # C4 and C5 stay as registered; C4b and C5b judge arm 1b, C4b against the arms 4b.
  assert claims.claim_4().startswith("not met.")
  c4b = claims.claim_4(claims.RECIPE_ARM, "bounded/")
  assert c4b.startswith("not met. At 10% of the MACs, bounded/retrain - bounded/random: +0.80 pp")
  assert "bounded/retrain - bounded/l1_norm_relative: -0.10 pp" in c4b
  assert claims.claim_5() == "none of the budgets run (not run: 0.25, 0.5, 0.75)"
  assert claims.claim_5b() == "at 0.1 of the MACs (-0.20 pp [-0.20, -0.20] against the control)"
  report = claims.report()
  assert "| 0.1 | 1b. the tool's recipe, pruned then retrained | 93.36% +- 0.11 |" in report
  assert "| 0.1 | 4b. uniform random, as 1b gates | 92.56% +- 0.11 |" in report
  assert "  - 0.1: bounded/retrain - retrain: +2.80 pp [+2.80, +2.80]" in report
  assert "  - 0.25: bounded/retrain - retrain: not judged yet" in report


def test_the_equal_retraining_view_is_read_from_its_folder_and_judged_against_arm_1(runs, tmp_path):
  runs(control=CONTROL, **every_arm(0.1, -3.0, retrain=shifted(CONTROL, -2.0)),
       **{"equal_retraining/random_macs0.1": shifted(CONTROL, -4.0)})
  assert (tmp_path / "equal_retraining" / "random_macs0.1_seed0" / "test_metrics.json").exists()
  report = claims.report()
  assert ("| 0.1 | 4. uniform random | 89.56% +- 0.11 | -4.00 pp [-4.00, -4.00] | "
          "-2.00 pp [-2.00, -2.00] |") in report
  assert "| 0.1 | 2. L0's mask, baseline's weights | not finished for every seed | | |" in report
  # The view supports no claim: C4 compares with runs/' uniform random (-3 pp), not its (-4 pp).
  assert "decided - random: +0.00 pp" in claims.claim_4()


def test_the_front_draws_an_arm_at_each_budget_it_finished(runs):
  runs(control=CONTROL, baseline=CONTROL, **every_arm(0.1, -3.0), **every_arm(0.25, -1.0),
       **{"bounded/retrain_macs0.1": shifted(CONTROL, -0.2)})
  ax, = claims.front_figure().axes
  drawn = dict(zip(*reversed(ax.get_legend_handles_labels())))
  assert set(drawn) == {"control", "baseline", *claims.ARMS.values(),
                        claims.RECIPE_ARMS[claims.RECIPE_ARM]}
  assert list(drawn[claims.ARMS["random"]].lines[0].get_ydata()) == pytest.approx(
      [sum(CONTROL) / 5 - 3.0, sum(CONTROL) / 5 - 1.0])
  assert len(drawn[claims.RECIPE_ARMS[claims.RECIPE_ARM]].lines[0].get_xdata()) == 1
