"""A sweep's results: each finished member's numbers, their summary over seeds, the table and
the front, rewritten from the members' files on every sweep (__main__.py says what they hold).
"""

import json
import pathlib
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from l0jax import plots, stats, workdirs
from l0jax.errors import UserError
from l0jax.sweep.planning import CHECKPOINT, KINDS, Member

COST_NAMES = {"macs": "MACs", "params": "params"}
RESULTS_FILE, TABLE_FILE, FRONT_FILE = "results.json", "results.md", "front.png"
# The best trade-off: of the pruned runs with at most TARGET_MACS of the MACs,
# the one with the highest validation accuracy (test accuracy chooses nothing).
TARGET_MACS = 0.5
NOT_PRUNED = ("baseline", "control")
# What the table takes from a member's test_metrics.json.
NUMBERS = ("test_accuracy", "checkpoint_step", "params_full", "params_kept",
           "params_kept_fraction", "macs_full", "macs_kept", "macs_kept_fraction")
MARKERS = {"baseline": "*", "control": "P", "scratch": "o", "finetune": "s", "budget": "^",
           "retrain": "D", "l1_norm": "v", "l1_norm_relative": "<", "random": "x",
           "decided": "d", "random_widths": "+"}
COLORS = {"baseline": "k", "control": "0.4", "scratch": "tab:orange", "finetune": "tab:blue",
          "budget": "tab:red", "retrain": "tab:green", "l1_norm": "tab:purple",
          "l1_norm_relative": "tab:pink", "random": "tab:brown", "decided": "tab:olive",
          "random_widths": "tab:cyan"}
LABELS = {"baseline": "baseline (no gates)",
          "control": "baseline trained on, nothing pruned (same budget)",
          "scratch": "L0 from scratch",
          "finetune": "L0 fine-tuned from the baseline",
          "budget": "pruned from the baseline to a budget",
          "retrain": "pruned, then retrained with its gates fixed",
          "l1_norm": "L1-norm filters at the same cost, trained",
          "l1_norm_relative": "L1-norm filters, relative to their layer's, same cost, trained",
          "random": "random channels at the same cost, trained",
          "decided": "the budget run's channels on the baseline's weights, trained",
          "random_widths": "random channels at the budget run's widths, trained"}


def is_finished(workdir: pathlib.Path) -> bool:
  """Tested at CHECKPOINT (a test of another checkpoint is done again)."""
  metrics = workdirs.read_test_metrics(workdir)
  return metrics is not None and metrics.get("checkpoint") == CHECKPOINT


def _unmeasured(workdir: pathlib.Path, why: str) -> UserError:
  return UserError(f"{workdir}: its {workdirs.TEST_METRICS_FILE} or {workdirs.HISTORY_FILE} does "
                   f"not hold the numbers of the table ({why}); delete its "
                   f"{workdirs.TEST_METRICS_FILE} to test it again")


def measured(workdir: pathlib.Path) -> dict[str, Any]:
  """A finished run's test metrics (of its last checkpoint), validation accuracy and train time."""
  metrics = workdirs.read_test_metrics(workdir)
  history = workdirs.load_history(workdir)
  try:
    numbers = {**{k: metrics[k] for k in NUMBERS},
               "val_accuracy": history[-1]["val_accuracy"],  # at the last checkpoint, the tested
               "epochs": len(history), "train_seconds": sum(h["epoch_seconds"] for h in history)}
  except (KeyError, TypeError) as e:  # A field missing, or a record that is not an object.
    raise _unmeasured(workdir, f"{type(e).__name__}: {e}") from e
  wrong = [f"{k}={v!r}" for k, v in numbers.items()
           if not isinstance(v, (int, float)) or isinstance(v, bool)]
  if wrong:
    raise _unmeasured(workdir, ", ".join(wrong))
  return {"dataset": str(metrics.get("dataset")), **numbers}


def collect(sweep_dir: pathlib.Path, members: Sequence[Member], command: str) -> dict[str, Any]:
  """Every finished member's test metrics and train time, and the best trade-off among them."""
  runs, unfinished = [], []
  for member in members:
    workdir = sweep_dir / member.name
    if not is_finished(workdir):
      unfinished.append(member.name)
      continue
    runs.append({
        "name": member.name, "kind": member.kind, "lambda_l0": member.lambda_l0,
        "seed": member.seed,
        "target_kind": member.target[0] if member.target else None,
        "target": member.target[1] if member.target else None,
        **measured(workdir)})
  return summarise(runs, unfinished, command)


def summarise(runs: Sequence[dict[str, Any]], unfinished: Sequence[str],
              command: str) -> dict[str, Any]:
  """The results of `runs` (as `collect` makes them): each one's change from its seed's
  baseline, the best trade-off, and with seeds the groups' means, spreads and paired differences."""
  baselines = {r["seed"]: r for r in runs if r["kind"] == "baseline"}
  runs = [{k: v for k, v in r.items() if k != "test_accuracy_change_pp"} for r in runs]
  for run in runs:
    if run["seed"] in baselines:  # The same seed's baseline.
      run["test_accuracy_change_pp"] = 100 * (run["test_accuracy"]
                                              - baselines[run["seed"]]["test_accuracy"])
  best = max((r for r in runs if r["kind"] not in NOT_PRUNED
              and r["macs_kept_fraction"] <= TARGET_MACS),
             key=lambda r: r["val_accuracy"], default=None)
  results = {"command": command, "dataset": runs[0]["dataset"] if runs else None,
             "runs": runs, "unfinished": list(unfinished),
             "best_trade_off": best["name"] if best else None}
  if any(r["seed"] is not None for r in runs):
    results["groups"] = seed_groups(runs)
  return results


def seed_groups(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The runs that differ only in their seed, as one row each: means, spreads, and each pruned
  group's paired difference to the control (or, without one, the baseline) of the same seeds."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for run in runs:
    groups.setdefault(run["name"].rsplit("_seed", 1)[0], []).append(run)
  reference = "control" if "control" in groups else "baseline"
  by_seed = {r["seed"]: r["test_accuracy"] for r in groups.get(reference, [])}
  rows = []
  for name, members in groups.items():
    row = {"name": name, "kind": members[0]["kind"], "target": members[0]["target"],
           "target_kind": members[0]["target_kind"], "lambda_l0": members[0]["lambda_l0"],
           "seeds": [r["seed"] for r in members]}
    for key in ("test_accuracy", "val_accuracy", "macs_kept_fraction", "params_kept_fraction"):
      row[key] = stats.spread([r[key] for r in members])._asdict()
    paired = [r for r in members if r["seed"] in by_seed]
    if name != reference and len(paired) >= 2:
      row["versus"] = reference
      row["paired_difference"] = stats.paired_interval(
          [r["test_accuracy"] for r in paired], [by_seed[r["seed"]] for r in paired])._asdict()
    rows.append(row)
  return rows


def _lambda(run: dict[str, Any]) -> str:
  return "-" if run["lambda_l0"] is None else f"{run['lambda_l0']:g}"


def _target(run: dict[str, Any]) -> str:
  """'50% MACs' for a run pruned to a budget; '-' for the rest."""
  if run.get("target") is None:
    return "-"
  return f"{100 * run['target']:g}% {COST_NAMES[run['target_kind']]}"


def hours_or_minutes(seconds: float) -> str:
  return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def table_markdown(results: dict[str, Any]) -> str:
  """The runs as a markdown table, with the command that made them and the best trade-off."""
  lines = [f"# L0 sweep on {results['dataset']}", "", f"`{results['command']}`", "",
           "| run | lambda_l0 | test accuracy | vs baseline | target | params kept | MACs kept "
           "| epochs | train time |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results["runs"]:
    change = r.get("test_accuracy_change_pp")
    versus = "-" if change is None or r["kind"] == "baseline" else f"{change:+.2f} pp"
    lines.append(
        f"| {r['name']} | {_lambda(r)} | {100 * r['test_accuracy']:.2f}% | {versus} | "
        f"{_target(r)} | {100 * r['params_kept_fraction']:.1f}% | "
        f"{100 * r['macs_kept_fraction']:.1f}% | "
        f"{r['epochs']} | {hours_or_minutes(r['train_seconds'])} |")
  best = next((r for r in results["runs"] if r["name"] == results["best_trade_off"]), None)
  lines.append("")
  if best:
    lines.append(f"Best trade-off, chosen by validation accuracy among the pruned runs with at "
                 f"most {TARGET_MACS:.0%} of the MACs: {best['name']} (validation "
                 f"{100 * best['val_accuracy']:.2f}%), {100 * best['macs_kept_fraction']:.1f}% of "
                 f"the MACs and {100 * best['params_kept_fraction']:.1f}% of the parameters at "
                 f"{100 * best['test_accuracy']:.2f}% test accuracy.")
  else:
    lines.append(f"No pruned run has at most {TARGET_MACS:.0%} of the MACs.")
  if results.get("groups"):
    lines += ["", *groups_markdown(results["groups"])]
  total = sum(r["train_seconds"] for r in results["runs"])
  lines += ["", f"Train time: the sum of a run's epoch times in its history.jsonl; "
            f"{hours_or_minutes(total)} for these {len(results['runs'])} runs."]
  if results["unfinished"]:
    lines += ["", f"Not finished: {', '.join(results['unfinished'])}."]
  return "\n".join(lines) + "\n"


def _mean_sd(spread: dict[str, float], scale: float = 100, unit: str = "%") -> str:
  sd = "-" if spread["sd"] != spread["sd"] else f"{scale * spread['sd']:.2f}"  # NaN: one seed
  return f"{scale * spread['mean']:.2f}{unit} +- {sd}"


def groups_markdown(groups: Sequence[dict[str, Any]]) -> list[str]:
  """Mean +- sample standard deviation over seeds, and paired differences with 95% intervals."""
  lines = ["## Over seeds", "",
           "Mean +- sample standard deviation over the seeds. Paired difference: the test "
           "accuracy minus that of the same seed's control (or baseline), its mean and 95% "
           "interval (Student's t over the seeds).", "",
           "| runs | seeds | test accuracy | MACs kept | params kept | paired difference | vs |",
           "|---|---|---:|---:|---:|---:|---|"]
  for g in groups:
    paired = g.get("paired_difference")
    difference = ("-" if not paired else
                  f"{100 * paired['mean']:+.2f} pp [{100 * paired['low']:+.2f}, "
                  f"{100 * paired['high']:+.2f}]")
    lines.append(f"| {g['name']} | {','.join(map(str, g['seeds']))} | "
                 f"{_mean_sd(g['test_accuracy'])} | {_mean_sd(g['macs_kept_fraction'])} | "
                 f"{_mean_sd(g['params_kept_fraction'])} | {difference} | {g.get('versus', '-')} |")
  return lines


def _points(results: dict[str, Any], key: str) -> list[dict[str, Any]]:
  """What the front plots: each run, or with seeds each group's means and spreads."""
  if not results.get("groups"):
    return [dict(r, x=100 * r[key], y=100 * r["test_accuracy"], xerr=0.0, yerr=0.0)
            for r in results["runs"]]
  sd = lambda spread: 0.0 if spread["sd"] != spread["sd"] else 100 * spread["sd"]
  return [dict(g, x=100 * g[key]["mean"], y=100 * g["test_accuracy"]["mean"], xerr=sd(g[key]),
               yerr=sd(g["test_accuracy"])) for g in results["groups"]]


def front_figure(results: dict[str, Any]) -> Figure:
  """Test accuracy against kept MACs and against kept parameters, the baseline's level marked.

  With seeds, each point is a group's mean, its error bars one standard deviation.
  """
  fig = Figure(figsize=(11, 5), layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  for ax, key, what in ((axes[0], "macs_kept_fraction", "MACs"),
                        (axes[1], "params_kept_fraction", "parameters")):
    points = _points(results, key)
    for kind in KINDS:
      runs = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["x"])
      if not runs:
        continue
      if kind == "baseline":
        ax.axhline(float(np.mean([p["y"] for p in runs])), color="k", lw=0.6, ls="--")
      ax.errorbar([p["x"] for p in runs], [p["y"] for p in runs],
                  xerr=[p["xerr"] for p in runs], yerr=[p["yerr"] for p in runs],
                  marker=MARKERS[kind], color=COLORS[kind], ms=12 if kind == "baseline" else 6,
                  lw=0.8, capsize=2, label=LABELS[kind])
      # A lambda says what made the point; a budget's point sits at its cost already, and the
      # runs at one budget would write it over each other.
      for p in (p for p in runs if p["lambda_l0"] is not None):
        ax.annotate(_lambda(p), (p["x"], p["y"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, color=COLORS[kind])
    if key == "macs_kept_fraction":
      ax.axvline(100 * TARGET_MACS, color="k", lw=0.6, ls=":",
                 label=f"target: at most {TARGET_MACS:.0%} of the MACs")
    ax.set(xlabel=f"{what} kept (%)", xlim=(0, 105))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy (%)")
  # Below the axes, where it hides no run.
  fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
  over = " (means over seeds, +- one sd)" if results.get("groups") else ""
  labels = (" (labels: lambda_l0)" if any(r["lambda_l0"] is not None for r in results["runs"])
            else "")
  fig.suptitle(f"{results['dataset']}: test accuracy against cost{over}{labels}", fontsize=10)
  return fig


def write_results(sweep_dir: pathlib.Path, results: dict[str, Any]) -> None:
  """results.json, results.md and front.png, rewritten from the runs' files on every sweep."""
  workdirs.write_text_atomically(sweep_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
  workdirs.write_text_atomically(sweep_dir / TABLE_FILE, table_markdown(results))
  if results["runs"]:
    plots.save_figure(front_figure(results), sweep_dir / FRONT_FILE)
