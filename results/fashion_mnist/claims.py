"""PROTOCOL.md's claims judged from the sweep's results.json, by the rules written there.

  python results/fashion_mnist/claims.py results/fashion_mnist/runs/results.json \
      > results/fashion_mnist/claims.md

Written and committed before the protocol's last run finished, so that the
rules applied are the protocol's and not chosen after the numbers: a claim
whose groups have not all finished for every seed is "not judged yet".
"""

import json
import sys
from typing import Any

SEEDS = [0, 1, 2]
BASELINE_LEVEL = 0.930  # mean test accuracy the baseline must reach
C1_MARGIN_PP = 0.3
POSTHOC_MASK = "l1_norm_relative"  # judged by C2's rule where posthoc/ adds it, beside the claims


def _group(results: dict[str, Any], name: str) -> dict[str, Any] | None:
  """The group `name` if it has finished for every protocol seed."""
  group = next((g for g in results.get("groups", []) if g["name"] == name), None)
  return group if group and sorted(group["seeds"]) == SEEDS else None


def _pp(fraction: float) -> str:
  return f"{100 * fraction:.2f}"


def _mean_sd(group: dict[str, Any]) -> str:
  accuracy = group["test_accuracy"]
  return f"{_pp(accuracy['mean'])}% +- {_pp(accuracy['sd'])}"


def baseline_level(results: dict[str, Any]) -> tuple[bool | None, str]:
  """Whether the baseline reached BASELINE_LEVEL mean test accuracy (None: not finished)."""
  baseline = _group(results, "baseline")
  if not baseline:
    return None, "baseline: not judged yet (not every seed has finished)"
  met = baseline["test_accuracy"]["mean"] >= BASELINE_LEVEL
  return met, (f"baseline: {_mean_sd(baseline)} test accuracy over seeds "
               f"{','.join(map(str, baseline['seeds']))}: "
               f"{'at least' if met else 'below'} {_pp(BASELINE_LEVEL)}%")


def claim_1(results: dict[str, Any]) -> tuple[str, str]:
  """C1: at 50% of the MACs, L0 within 0.3 pp of the control; 'supported' if its interval is."""
  l0, control = _group(results, "retrain_macs0.5"), _group(results, "control")
  if not (l0 and control):
    return "not judged yet", "retrain_macs0.5 or control has not finished for every seed"
  d = l0["paired_difference"]
  assert l0["versus"] == "control", l0["versus"]
  low, mean = 100 * d["low"], 100 * d["mean"]
  verdict = ("met and supported" if low >= -C1_MARGIN_PP else "met, not supported"
             ) if mean >= -C1_MARGIN_PP else "not met"
  return verdict, (f"L0 {_mean_sd(l0)} at {_pp(l0['macs_kept_fraction']['mean'])}% of the MACs, "
                   f"control {_mean_sd(control)}; paired difference {mean:+.2f} pp, 95% interval "
                   f"[{low:+.2f}, {100 * d['high']:+.2f}] (met if the mean is >= "
                   f"-{C1_MARGIN_PP} pp, supported if the interval's lower end is too)")


def claim_2(results: dict[str, Any], other: str) -> tuple[str, str]:
  """C2 against `other` (l1_norm, random) at 25%: mean(L0) - mean(other) > max of the two sds."""
  l0, them = _group(results, "retrain_macs0.25"), _group(results, f"{other}_macs0.25")
  if not (l0 and them):
    return "not judged yet", f"retrain_macs0.25 or {other}_macs0.25 has not finished for every seed"
  gap = l0["test_accuracy"]["mean"] - them["test_accuracy"]["mean"]
  spread = max(l0["test_accuracy"]["sd"], them["test_accuracy"]["sd"])
  return ("met" if gap > spread else "not met"), (
      f"L0 {_mean_sd(l0)} at {_pp(l0['macs_kept_fraction']['mean'])}% of the MACs, {other} "
      f"{_mean_sd(them)} at {_pp(them['macs_kept_fraction']['mean'])}%; L0 - {other} = "
      f"{100 * gap:+.2f} pp against the larger sd, {_pp(spread)} pp")


def report(results: dict[str, Any]) -> str:
  level, level_line = baseline_level(results)
  lines = ["# PROTOCOL.md's claims, judged by claims.py", "",
           f"From `{results['command']}`.", ""]
  if level is False:  # The protocol's caveat, in every claim's first line.
    lines += [f"**Caveat on every claim: the {level_line}.**", ""]
  lines += [f"- {level_line}"]
  for name, (verdict, why) in (("C1", claim_1(results)),
                               ("C2 against L1-norm", claim_2(results, "l1_norm")),
                               ("C2 against random", claim_2(results, "random"))):
    lines.append(f"- **{name}: {verdict}.** {why}")
  if any(g["name"] == f"{POSTHOC_MASK}_macs0.25" for g in results["groups"]):
    verdict, why = claim_2(results, POSTHOC_MASK)
    lines.append(f"- *Post hoc (PROTOCOL.md's amendment of 2026-12-03, supports no claim)*: "
                 f"**C2's rule against L1-norm relative to each layer: {verdict}.** {why}")
  lines.append("- C3 (descriptive): the analyses of seed 0's budget runs, "
               "runs/budget_macs*_seed0/analysis/summary.md.")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: claims.py RESULTS_JSON")
  try:
    with open(sys.argv[1]) as f:
      results_json = json.load(f)
  except (OSError, ValueError) as e:
    sys.exit(f"claims.py: cannot read {sys.argv[1]}: {e}")
  print(report(results_json), end="")
