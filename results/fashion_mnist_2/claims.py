"""PROTOCOL.md's tables, claims and front from the runs' own test_metrics.json, by its rules.

  python results/fashion_mnist_2/claims.py > results/fashion_mnist_2/claims.md

writes the tables and claims to stdout and the front (test accuracy against kept MACs, every arm,
one-sd bars) to front.png beside this file.

Written and committed before any test number of the protocol existed, so that the rules
applied are the protocol's: an arm that has not finished for every seed is left out of the
table, and a claim that needs it is "not judged yet". Arms 1b and 4b and their claims (C4b,
C5b) were added by PROTOCOL.md's amendment of 2026-12-07, before any of their runs.
"""

import json
import pathlib

from matplotlib.figure import Figure

from l0jax import plots, stats

FRONT = pathlib.Path(__file__).parent / "front.png"
RUNS = pathlib.Path(__file__).parent / "runs"
BOUNDED = pathlib.Path(__file__).parent / "bounded"  # the runs of arms 1b and 4b
EQUAL = pathlib.Path(__file__).parent / "equal_retraining"  # arms 2-4 trained R epochs
SEEDS = (0, 1, 2, 3, 4)
BUDGETS = (0.75, 0.5, 0.25, 0.1)
BASELINE_LEVEL = 93.0  # mean test accuracy (%) the baselines must reach
C5_MARGIN = 0.3  # pp
ARMS = {"retrain": "1. L0, pruned then retrained", "decided": "2. L0's mask, baseline's weights",
        "random_widths": "3. random at L0's widths", "random": "4. uniform random",
        "l1_norm_relative": "4. L1-norm relative"}
# The L0 arm the claims name, as the pilot fixed it (PROTOCOL.md, "Fixed by the pilot").
L0_ARM = "retrain"
# The amendment's arms, in bounded/ (their names say so), at the budgets they run at: the tool's
# recipe, and the simple methods at its cost with the same channels gated.
RECIPE_ARM = "bounded/retrain"
RECIPE_ARMS = {RECIPE_ARM: "1b. the tool's recipe, pruned then retrained",
               "bounded/random": "4b. uniform random, as 1b gates",
               "bounded/l1_norm_relative": "4b. L1-norm relative, as 1b gates"}
RECIPE_BUDGETS = (0.25, 0.1)
# The equal-retraining view (PROTOCOL.md, "Arms"): arms 2-4 trained as long as arm 1 retrains,
# reported beside the main table, supporting no claim.
EQUAL_ARMS = ("decided", "random_widths", "random", "l1_norm_relative")
EQUAL_BUDGETS = (0.25, 0.1)


def run_name(arm: str, budget: float) -> str:
  return f"{arm}_macs{budget}"


def run_dir(name: str, seed: int) -> pathlib.Path:
  """The folder of `name`'s run of `seed`: in runs/, or in the folder `name` starts with."""
  folder, _, run = name.rpartition("/")
  root = {"": RUNS, "bounded": BOUNDED, "equal_retraining": EQUAL}[folder]
  return root / f"{run}_seed{seed}"


def metrics(name: str) -> list[dict] | None:
  """Each seed's test metrics of the run `name`, or None if some seed has not finished."""
  files = [run_dir(name, s) / "test_metrics.json" for s in SEEDS]
  return [json.loads(f.read_text()) for f in files] if all(f.exists() for f in files) else None


def accuracies(name: str) -> list[float] | None:
  found = metrics(name)
  return found and [100 * m["test_accuracy"] for m in found]


def interval(a: str, b: str) -> stats.Interval | None:
  """The paired difference acc(a) - acc(b) in pp over the seeds, if both have finished."""
  x, y = accuracies(a), accuracies(b)
  return stats.paired_interval(x, y) if x and y else None


def said(i: stats.Interval) -> str:
  return f"{i.mean:+.2f} pp [{i.low:+.2f}, {i.high:+.2f}]"


def table() -> list[str]:
  lines = ["| budget | arm | test accuracy (mean +- sd) | MACs kept | params kept | "
           "minus control, paired 95% |", "|---|---|---|---|---|---|"]
  for name in ("baseline", "control"):
    found = metrics(name)
    if found:
      acc = stats.spread([100 * m["test_accuracy"] for m in found])
      lines.append(f"| | {name} | {acc.mean:.2f}% +- {acc.sd:.2f} | 100% | 100% | |")
  for budget in BUDGETS:
    for arm, what in {**ARMS, **RECIPE_ARMS}.items():
      found = metrics(run_name(arm, budget))
      if not found:
        continue
      acc = stats.spread([100 * m["test_accuracy"] for m in found])
      macs = stats.spread([100 * m["macs_kept_fraction"] for m in found])
      params = stats.spread([100 * m["params_kept_fraction"] for m in found])
      versus = interval(run_name(arm, budget), "control")
      lines.append(f"| {budget} | {what} | {acc.mean:.2f}% +- {acc.sd:.2f} | "
                   f"{macs.mean:.1f}% | {params.mean:.1f}% | {said(versus) if versus else ''} |")
  return lines


def equal_retraining_table() -> list[str]:
  """Arms 2-4 trained R epochs after their mask, against the control and against arm 1."""
  lines = ["| budget | arm, R epochs | test accuracy (mean +- sd) | minus control, paired 95% | "
           "minus arm 1, paired 95% |", "|---|---|---|---|---|"]
  for budget in EQUAL_BUDGETS:
    for arm in EQUAL_ARMS:
      name = run_name(f"equal_retraining/{arm}", budget)
      found = accuracies(name)
      if not found:
        lines.append(f"| {budget} | {ARMS[arm]} | not finished for every seed | | |")
        continue
      acc = stats.spread(found)
      versus = [interval(name, other) for other in ("control", run_name("retrain", budget))]
      lines.append(f"| {budget} | {ARMS[arm]} | {acc.mean:.2f}% +- {acc.sd:.2f} | " +
                   " | ".join(said(i) if i else "" for i in versus) + " |")
  return lines


def claim_4(arm: str = "", folder: str = "") -> str:
  """C4 of the L0 arm, or C4b: of `arm` against the simple methods in `folder` ("bounded/")."""
  arm = arm or L0_ARM
  if arm is None:
    return "not judged yet: the pilot has not named the L0 arm"
  parts, met = [], []
  for other in (f"{folder}random", f"{folder}l1_norm_relative"):
    i = interval(run_name(arm, 0.1), run_name(other, 0.1))
    if i is None:
      return f"not judged yet: {arm} or {other} at 0.1 has not finished for every seed"
    met.append(i.low > 0)
    parts.append(f"{arm} - {other}: {said(i)}")
  return f"{'met' if all(met) else 'not met'}. At 10% of the MACs, " + "; ".join(parts)


def was_run(budget: float) -> bool:
  """Whether any run of `budget` was started (PROTOCOL.md's cut falls on whole budgets)."""
  return any(RUNS.glob(f"*_macs{budget}_seed*"))


def claim_5() -> str:
  """Judged on the budgets that were run (PROTOCOL.md's amendment of 2026-12-07)."""
  cut = [b for b in BUDGETS if not was_run(b)]
  not_run = f" (not run: {', '.join(map(str, sorted(cut)))})" if cut else ""
  for budget in sorted(b for b in BUDGETS if b not in cut):  # the largest reduction first
    within = []
    for arm in ARMS:
      i = interval(run_name(arm, budget), "control")
      if i is None:
        return f"not judged yet: {run_name(arm, budget)} or the control is unfinished"
      if within_margin(i):
        within.append(f"{ARMS[arm]} ({said(i)} against the control)")
    if within:
      return f"at {budget} of the MACs: " + "; ".join(within) + not_run
  return "none of the budgets run" + not_run


def within_margin(i: stats.Interval) -> bool:
  return i.mean >= -C5_MARGIN and i.low >= -C5_MARGIN


def claim_5b() -> str:
  """The largest reduction at which arm 1b is within the margin of the control."""
  for budget in sorted(RECIPE_BUDGETS):
    i = interval(run_name(RECIPE_ARM, budget), "control")
    if i is None:
      return f"not judged yet: {run_name(RECIPE_ARM, budget)} or the control is unfinished"
    if within_margin(i):
      return f"at {budget} of the MACs ({said(i)} against the control)"
  return f"at none of {', '.join(map(str, sorted(RECIPE_BUDGETS)))}"


def recipe_against_arm_1() -> list[str]:
  """What the recipe's changes gave (descriptive): arm 1b - arm 1 at each of its budgets."""
  lines = []
  for budget in RECIPE_BUDGETS:
    i = interval(run_name(RECIPE_ARM, budget), run_name("retrain", budget))
    lines.append(f"  - {budget}: {RECIPE_ARM} - retrain: {said(i) if i else 'not judged yet'}")
  return lines


def claim_6() -> list[str]:
  pairs = (("retrain", "decided", "the noisy pruning phase"),
           ("decided", "random_widths", "L0's channels at its widths"),
           ("random_widths", "random", "L0's allocation of widths"))
  lines = []
  for budget in (0.5, 0.25):
    for a, b, what in pairs:
      i = interval(run_name(a, budget), run_name(b, budget))
      lines.append(f"  - {budget}: {a} - {b} ({what}): "
                   f"{said(i) if i else 'not judged yet'}")
  return lines


def report() -> str:
  lines = ["# Protocol 2's tables and claims, by claims.py", "",
           f"Test accuracy at each run's last checkpoint, seeds {', '.join(map(str, SEEDS))}; "
           f"paired intervals with t(0.975, {len(SEEDS) - 1}).", ""]
  baselines = accuracies("baseline")
  if baselines:
    level = stats.spread(baselines)
    if level.mean < BASELINE_LEVEL:
      lines += [f"**Caveat on every claim: the baselines reach {level.mean:.2f}% mean test "
                f"accuracy, below {BASELINE_LEVEL}%.**", ""]
  lines += table() + ["", f"- **C4** (the L0 arm beats uniform random and L1-norm relative at "
                      f"10%): {claim_4()}",
                      f"- **C5** (same accuracy, within {C5_MARGIN} pp of the control): "
                      f"{claim_5()}",
                      "- **C6** (why; paired differences):", *claim_6(), "",
                      "Added by the amendment of 2026-12-07 (arms 1b and 4b, `bounded/`):", "",
                      f"- **C4b** (arm 1b beats arms 4b, uniform random and L1-norm relative "
                      f"gating the same channels, at 10%): {claim_4(RECIPE_ARM, 'bounded/')}",
                      f"- **C5b** (arm 1b within {C5_MARGIN} pp of the control, largest "
                      f"reduction): {claim_5b()}",
                      "- arm 1b - arm 1 (what the recipe's changes gave; paired differences):",
                      *recipe_against_arm_1(), "",
                      "The equal-retraining view (`equal_retraining/`): arms 2-4 trained for "
                      "the R epochs arm 1 retrains, not M; it supports no claim.", "",
                      *equal_retraining_table()]
  return "\n".join(lines) + "\n"


def front_figure() -> Figure:
  """Each arm's mean test accuracy against its mean kept MACs over the budgets it finished."""
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.subplots()
  for name, style in (("control", "-"), ("baseline", "--")):
    found = accuracies(name)
    if found:
      ax.axhline(stats.spread(found).mean, color="k", lw=0.7, ls=style, label=name)
  for arm, what in {**ARMS, **RECIPE_ARMS}.items():
    points = []
    for budget in BUDGETS:
      found = metrics(run_name(arm, budget))
      if found:
        acc = stats.spread([100 * m["test_accuracy"] for m in found])
        macs = stats.spread([100 * m["macs_kept_fraction"] for m in found])
        points.append((macs.mean, acc.mean, macs.sd, acc.sd))
    if points:
      x, y, xerr, yerr = zip(*sorted(points))
      ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", ms=4, lw=0.8, capsize=2, label=what,
                  ls="--" if arm.startswith("bounded/") else "-")
  ax.set(xlabel="MACs kept (%)", ylabel="test accuracy (%)", xlim=(0, 105))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  fig.suptitle(f"Protocol 2: means over seeds {', '.join(map(str, SEEDS))}, +- one sd",
               fontsize=10)
  return fig


if __name__ == "__main__":
  print(report(), end="")
  plots.save_figure(front_figure(), FRONT)
